//! x86_64: registers from `mcontext_t.gregs` (glibc and musl share the kernel's layout).

use framehop::x86_64::UnwindRegsX86_64;

/// Registers of an interrupted (or the calling) thread that a stack walk starts from.
#[derive(Clone, Copy, Debug)]
pub(crate) struct InterruptedRegs {
    pub pc: u64,
    pub sp: u64,
    pub fp: u64,
}

impl InterruptedRegs {
    /// Reads the registers from the third argument of an `SA_SIGINFO` handler.
    ///
    /// # Safety
    /// `ucontext` must be the context pointer the kernel passed to the running handler.
    pub unsafe fn from_ucontext(ucontext: *const libc::c_void) -> Self {
        // SAFETY: the caller passes the kernel's ucontext, valid during the handler.
        let uc = unsafe { &*(ucontext as *const libc::ucontext_t) };
        let g = &uc.uc_mcontext.gregs;
        InterruptedRegs {
            pc: g[libc::REG_RIP as usize] as u64,
            sp: g[libc::REG_RSP as usize] as u64,
            fp: g[libc::REG_RBP as usize] as u64,
        }
    }

    /// The registers framehop unwinds from. x86_64 has no pointer authentication, so
    /// `_highest_code_address` is not needed here.
    pub fn unwind_regs(&self, _highest_code_address: u64) -> UnwindRegsX86_64 {
        UnwindRegsX86_64::new(self.pc, self.sp, self.fp)
    }
}

/// The program counter, stack pointer and frame pointer at the point of the call, read by
/// one asm block so they describe the same instruction (what the unwind tables expect).
#[inline(always)]
pub(crate) fn current_regs() -> InterruptedRegs {
    let (pc, sp, fp): (u64, u64, u64);
    // SAFETY: reads three registers into outputs; touches no memory and no flags.
    unsafe {
        std::arch::asm!(
            "lea {pc}, [rip]",
            "mov {sp}, rsp",
            "mov {fp}, rbp",
            pc = out(reg) pc,
            sp = out(reg) sp,
            fp = out(reg) fp,
            options(nomem, nostack, preserves_flags)
        );
    }
    InterruptedRegs { pc, sp, fp }
}

/// The system call result register (`rax`) of an interrupted context.
///
/// # Safety
/// `ucontext` must be the context pointer the kernel passed to the running handler.
pub(crate) unsafe fn syscall_result(ucontext: *const libc::c_void) -> i64 {
    // SAFETY: the caller passes the kernel's ucontext, valid during the handler.
    let uc = unsafe { &*(ucontext as *const libc::ucontext_t) };
    uc.uc_mcontext.gregs[libc::REG_RAX as usize]
}

/// The instruction that enters the kernel: `syscall`.
pub(crate) const SYSCALL_INSTRUCTION: &[u8] = &[0x0f, 0x05];

/// Waiting-for-I/O system calls that only this architecture has (aarch64 has only the
/// `p` forms, which every architecture has).
pub(crate) const LEGACY_IO_SYSCALLS: &[libc::c_long] =
    &[libc::SYS_epoll_wait, libc::SYS_poll, libc::SYS_select];

/// Names of the system calls only this architecture has (for dumps and profiles).
pub(crate) const LEGACY_SYSCALL_NAMES: &[(libc::c_long, &str)] = &[
    (libc::SYS_epoll_wait, "epoll_wait"),
    (libc::SYS_poll, "poll"),
    (libc::SYS_select, "select"),
    (libc::SYS_pause, "pause"),
];
