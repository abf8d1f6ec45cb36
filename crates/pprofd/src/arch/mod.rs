//! What differs between the processor architectures pprofd profiles on Linux: the registers a
//! signal handler reads from the kernel's `ucontext`, the instruction that enters the kernel,
//! and the system calls that exist only on some of them. One file per architecture; the rest
//! of the crate uses the names re-exported here and never tests `target_arch` itself.
//!
//! The crate root compiles the Linux implementation only on x86_64 and aarch64, so exactly
//! one of these files is built.

#[cfg(target_arch = "aarch64")]
mod aarch64;
#[cfg(target_arch = "x86_64")]
mod x86_64;

#[cfg(target_arch = "aarch64")]
pub(crate) use aarch64::*;
#[cfg(target_arch = "x86_64")]
pub(crate) use x86_64::*;
