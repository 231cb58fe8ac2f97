//! A pipe for splice(2): socket -> pipe -> socket moves bytes without copying them into
//! userspace. Both calls are non-blocking; the relay waits for socket readiness itself.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

/// Pipe capacity asked for (the default is 64 KiB; larger means fewer calls per byte).
pub const PIPE_SIZE: libc::c_int = 1 << 20;

/// A non-blocking pipe.
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    /// Creates the pipe and tries to make it 1 MiB (keeping the default if not allowed).
    pub fn new() -> io::Result<Self> {
        let mut fds = [0; 2];
        // SAFETY: fds has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both fds were just created and are owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: plain fcntl on our own fd; failure (e.g. over /proc/sys/fs/pipe-max-size) is harmless.
        unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE) };
        Ok(Pipe { read, write })
    }

    /// Moves what `src` has (up to the pipe's room) into the pipe; 0 means EOF.
    pub fn fill_from(&self, src: &impl AsRawFd) -> io::Result<usize> {
        splice(src.as_raw_fd(), self.write.as_raw_fd(), PIPE_SIZE as usize)
    }

    /// Moves up to `len` bytes from the pipe into `dst`.
    pub fn drain_to(&self, dst: &impl AsRawFd, len: usize) -> io::Result<usize> {
        splice(self.read.as_raw_fd(), dst.as_raw_fd(), len)
    }
}

impl Pipe {
    /// Reads up to `len` bytes out of the pipe (what a stopped relay hands over).
    pub fn read_out(&self, len: usize) -> io::Result<Vec<u8>> {
        let mut out = vec![0u8; len];
        let mut got = 0;
        while got < len {
            // SAFETY: reads into the unfilled tail of `out`, which has `len - got` bytes.
            let n = unsafe { libc::read(self.read.as_raw_fd(), out[got..].as_mut_ptr().cast(), len - got) };
            match n {
                0 => break,
                n if n > 0 => got += n as usize,
                _ => match io::Error::last_os_error() {
                    e if e.kind() == io::ErrorKind::Interrupted => {}
                    e if e.kind() == io::ErrorKind::WouldBlock => break,
                    e => return Err(e),
                },
            }
        }
        out.truncate(got);
        Ok(out)
    }
}

fn splice(from: i32, to: i32, len: usize) -> io::Result<usize> {
    // SAFETY: valid fds; null offsets are allowed for pipes and sockets.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
}
