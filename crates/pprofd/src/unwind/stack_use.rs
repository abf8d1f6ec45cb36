//! Measuring how much stack a piece of code uses, for the tests that keep the signal handlers
//! and the heap sampler within the room they check for (`stacks::WALK_STACK_NEED`).
//!
//! [`measure`] runs the code on a fresh thread whose stack below the call is first painted
//! with a pattern; afterwards the lowest byte that no longer holds the pattern shows how deep
//! the code (and any signal frame the kernel pushed for it) went.

const PAINT: u8 = 0xa5;
/// Stack painted below the call: far more than any handler may use.
const PAINTED: usize = 64 * 1024;

/// Bytes of stack that `run` used below its caller's frame, including signal frames, on a
/// fresh thread where `prepare` ran first (unmeasured) and gave `run` its input.
pub(crate) fn measure<S>(prepare: impl FnOnce() -> S + Send, run: impl FnOnce(S) + Send) -> usize {
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .stack_size(1 << 20)
            .spawn_scoped(scope, || painted_call(prepare(), run))
            .expect("spawn the measuring thread")
            .join()
            .expect("the measured code does not panic")
    })
}

#[inline(never)]
fn painted_call<S>(input: S, f: impl FnOnce(S)) -> usize {
    let top = super::current_regs().sp;
    let bottom = top as usize - PAINTED;
    paint(bottom, top as usize);
    f(input);
    let lowest = (bottom..top as usize)
        // SAFETY: the range is this thread's own mapped stack (1 MiB, the call is near its top).
        .find(|&a| unsafe { std::ptr::read_volatile(a as *const u8) } != PAINT)
        .unwrap_or(top as usize);
    top as usize - lowest
}

/// Paints `bottom..end`, which lies below this function's own frame.
#[inline(never)]
fn paint(bottom: usize, end: usize) {
    let here = super::current_regs().sp as usize;
    for a in bottom..end.min(here - 256) {
        // SAFETY: unused stack of this thread below the live frames, which no one else uses.
        unsafe { std::ptr::write_volatile(a as *mut u8, PAINT) };
    }
}
