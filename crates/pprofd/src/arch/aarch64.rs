//! aarch64: registers from `mcontext_t` (`regs[0..31]`, `sp`, `pc`; glibc and musl share the
//! kernel's layout). The frame pointer is x29 and the link register x30.
//!
//! The interrupted `pc` is the leaf; `lr` is passed to framehop separately as the leaf's
//! return address (valid only until the leaf's prologue saves it, which the CFI says), never
//! as the leaf itself. With pointer authentication (`-mbranch-protection=pac-ret`, the
//! default of some distributions' compilers) return addresses saved on the stack and the live
//! `lr` carry a signature in their top bits: framehop strips them with a mask built from the
//! highest address any loaded object occupies.

use framehop::aarch64::{PtrAuthMask, UnwindRegsAarch64};

/// Registers of an interrupted (or the calling) thread that a stack walk starts from.
#[derive(Clone, Copy, Debug)]
pub(crate) struct InterruptedRegs {
    pub pc: u64,
    pub sp: u64,
    pub fp: u64,
    /// The link register, which holds the leaf's return address until its prologue saves it.
    pub lr: u64,
}

impl InterruptedRegs {
    /// Reads the registers from the third argument of an `SA_SIGINFO` handler.
    ///
    /// # Safety
    /// `ucontext` must be the context pointer the kernel passed to the running handler.
    pub unsafe fn from_ucontext(ucontext: *const libc::c_void) -> Self {
        // SAFETY: the caller passes the kernel's ucontext, valid during the handler.
        let uc = unsafe { &*(ucontext as *const libc::ucontext_t) };
        let m = &uc.uc_mcontext;
        InterruptedRegs {
            pc: m.pc,
            sp: m.sp,
            fp: m.regs[29],
            lr: m.regs[30],
        }
    }

    /// The registers framehop unwinds from, with pointer-authentication bits stripped from
    /// every return address: code lies at or below `highest_code_address`, so higher bits
    /// are a signature.
    pub fn unwind_regs(&self, highest_code_address: u64) -> UnwindRegsAarch64 {
        UnwindRegsAarch64::new_with_ptr_auth_mask(
            PtrAuthMask::from_max_known_address(highest_code_address),
            self.lr,
            self.sp,
            self.fp,
        )
    }
}

/// The program counter, stack pointer, frame pointer and link register at the point of the
/// call, read by one asm block so they describe the same instruction.
#[inline(always)]
pub(crate) fn current_regs() -> InterruptedRegs {
    let (pc, sp, fp, lr): (u64, u64, u64, u64);
    // SAFETY: reads four registers into outputs; touches no memory and no flags.
    unsafe {
        std::arch::asm!(
            "adr {pc}, .",
            "mov {sp}, sp",
            "mov {fp}, x29",
            "mov {lr}, x30",
            pc = out(reg) pc,
            sp = out(reg) sp,
            fp = out(reg) fp,
            lr = out(reg) lr,
            options(nomem, nostack, preserves_flags)
        );
    }
    InterruptedRegs { pc, sp, fp, lr }
}

/// The system call result register (`x0`) of an interrupted context.
///
/// # Safety
/// `ucontext` must be the context pointer the kernel passed to the running handler.
pub(crate) unsafe fn syscall_result(ucontext: *const libc::c_void) -> i64 {
    // SAFETY: the caller passes the kernel's ucontext, valid during the handler.
    let uc = unsafe { &*(ucontext as *const libc::ucontext_t) };
    uc.uc_mcontext.regs[0] as i64
}

/// The instruction that enters the kernel: `svc #0`, little-endian.
pub(crate) const SYSCALL_INSTRUCTION: &[u8] = &[0x01, 0x00, 0x00, 0xd4];

/// Waiting-for-I/O system calls that only some architectures have: none on aarch64, whose
/// kernel offers only the `p` forms (`ppoll`, `pselect6`, `epoll_pwait`).
pub(crate) const LEGACY_IO_SYSCALLS: &[libc::c_long] = &[];

/// Names of the system calls only some architectures have: none on aarch64.
pub(crate) const LEGACY_SYSCALL_NAMES: &[(libc::c_long, &str)] = &[];
