//! A front's routing for the configuration in force: its section's settings, the compiled
//! router and each route's counters, swapped whole on a reload (a connection keeps the table
//! it was accepted under).

use std::sync::{Arc, RwLock};

use super::stats::{RouteStats, Stats};

/// What a front routes with, compiled from its section.
pub trait Router: Sized + Send + Sync + 'static {
    /// The front's section (`[tls]`, `[http]`).
    type Settings: Send + Sync + 'static;

    /// Compiles a validated section.
    fn compile(settings: &Self::Settings) -> Self;

    /// The routes' names, in the order the router numbers them.
    fn route_names(&self) -> Vec<&str>;
}

/// One configuration's routing.
pub struct Table<R: Router> {
    /// The section.
    pub settings: R::Settings,
    /// The compiled routes.
    pub router: R,
    /// Route `i`'s counters (continued by name across reloads).
    pub stats: Vec<Arc<RouteStats>>,
}

/// The table in force (`None` without the section), swapped on reload.
pub struct Tables<R: Router> {
    current: RwLock<Option<Arc<Table<R>>>>,
    stats: Arc<Stats>,
}

impl<R: Router> Tables<R> {
    /// The table of `settings`, its routes counting into `stats`.
    pub fn new(settings: Option<R::Settings>, stats: Arc<Stats>) -> Self {
        let tables = Tables { current: RwLock::new(None), stats };
        tables.update(settings);
        tables
    }

    /// Swaps in a new section (or none): new connections are routed by it, connections already
    /// relayed keep going; counters of routes that keep their name continue.
    pub fn update(&self, settings: Option<R::Settings>) {
        let table = settings.map(|settings| {
            let router = R::compile(&settings);
            let stats = router.route_names().into_iter().map(|n| self.stats.route(n)).collect();
            Arc::new(Table { settings, router, stats })
        });
        *self.current.write().expect("table lock") = table;
    }

    /// The table in force now.
    pub fn current(&self) -> Option<Arc<Table<R>>> {
        self.current.read().expect("table lock").clone()
    }
}
