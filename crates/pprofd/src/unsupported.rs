//! pprofd where it does not profile: every target but Linux on x86_64 and aarch64 (macOS,
//! Windows, the BSDs, other Linux architectures).
//!
//! A service that adds pprofd's two lines must still build and run on a developer's laptop, so
//! this is the same API a service uses, doing nothing: [`heap::Allocator`] forwards every call
//! to its inner allocator (inlined, so it costs nothing), [`init_from_env`] returns `Ok(None)`
//! (logging once, when `PPROF_ADDR` asks for a server, that profiling is Linux-only), and
//! [`server::Server::start`] returns [`Error::Unsupported`] naming the platform. Nothing is
//! served here: the profilers need Linux's per-thread CPU timers, real-time signals, `/proc`
//! and ELF unwind tables, and an index page listing no profile would only mislead a scraper.
//! The [`crate::profile`] model and [`server::flame_graph_svg`] are the same as on Linux, so
//! the `pprofd` command reads profiles anywhere.

use crate::Error;

/// The allocator wrapper; sampling is Linux-only.
pub mod heap {
    use std::alloc::{GlobalAlloc, Layout, System};

    /// A global allocator that forwards every call to `A`. On Linux it samples allocations
    /// for `/debug/pprof/heap`; here it is only a forwarder, so a service keeps one
    /// `#[global_allocator]` line for every platform.
    ///
    /// ```
    /// #[global_allocator]
    /// static ALLOC: pprofd::Allocator<std::alloc::System> = pprofd::Allocator::system();
    /// ```
    pub struct Allocator<A = System> {
        inner: A,
    }

    impl Allocator<System> {
        /// Wraps the system allocator.
        pub const fn system() -> Self {
            Allocator { inner: System }
        }
    }

    impl<A> Allocator<A> {
        /// Wraps `inner`.
        pub const fn new(inner: A) -> Self {
            Allocator { inner }
        }
    }

    // SAFETY: every method forwards to the inner allocator with the caller's arguments, so
    // `A`'s guarantees are this allocator's.
    unsafe impl<A: GlobalAlloc> GlobalAlloc for Allocator<A> {
        #[inline(always)]
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { self.inner.alloc(layout) }
        }

        #[inline(always)]
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { self.inner.alloc_zeroed(layout) }
        }

        #[inline(always)]
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { self.inner.dealloc(ptr, layout) }
        }

        #[inline(always)]
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { self.inner.realloc(ptr, layout, new_size) }
        }
    }
}

/// The server's configuration and handle; serving is Linux-only.
pub mod server {
    pub use crate::flame_graph::flame_graph_svg;

    use std::net::SocketAddr;
    use std::time::Duration;

    use crate::Error;

    /// How the server would run on Linux. Every setting is accepted so that one configuration
    /// builds everywhere; here [`Server::start`] refuses it.
    #[derive(Clone, Debug)]
    pub struct Config {
        addr: String,
    }

    impl Config {
        /// Listen on `addr` (on Linux).
        pub fn new(addr: impl Into<String>) -> Self {
            Config { addr: addr.into() }
        }

        /// The whole-request read deadline (on Linux).
        pub fn request_read_timeout(self, _timeout: Duration) -> Self {
            self
        }

        /// The longest `seconds` a profile request may ask for (on Linux).
        pub fn max_profile_seconds(self, _seconds: u64) -> Self {
            self
        }

        /// The bearer token every request must carry (on Linux).
        pub fn token(self, _token: Option<String>) -> Self {
            self
        }

        /// The flight recorder's window (on Linux).
        pub fn record(self, _window: std::time::Duration) -> Self {
            self
        }

        /// The flight recorder's CPU sampling rate (on Linux).
        pub fn record_hz(self, _hz: u32) -> Self {
            self
        }
    }

    /// A running pprof server; none can exist on this platform.
    pub struct Server {
        never: std::convert::Infallible,
    }

    impl Server {
        /// Always [`Error::Unsupported`]: pprofd serves profiles only on Linux (x86_64 and
        /// aarch64).
        pub fn start(config: Config) -> Result<Server, Error> {
            Err(Error::Unsupported {
                platform: super::platform(),
                addr: config.addr,
            })
        }

        /// The address the server listens on.
        pub fn local_addr(&self) -> SocketAddr {
            match self.never {}
        }

        /// Stops the server.
        pub fn shutdown(self) {
            match self.never {}
        }
    }
}

/// This target, as `macos/aarch64`.
fn platform() -> String {
    format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH)
}

/// Returns `Ok(None)`: pprofd profiles only on Linux. When `PPROF_ADDR` asks for a server,
/// says so once through `log` (a warning), so nobody waits for endpoints that never come.
pub fn init_from_env() -> Result<Option<server::Server>, Error> {
    static WARNED: std::sync::Once = std::sync::Once::new();
    if std::env::var_os(crate::ADDR_ENV).is_some_and(|addr| !addr.is_empty()) {
        WARNED.call_once(|| {
            log::warn!(
                "pprofd: {} is set, but pprofd profiles only on Linux (x86_64, aarch64); nothing is served on {}",
                crate::ADDR_ENV,
                platform()
            );
        });
    }
    Ok(None)
}
