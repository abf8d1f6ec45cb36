//! A host that does what real services and libraries do to a process, for `tests/host_safety.rs`:
//! it forks, changes SIGPROF, runs code with little stack left, inside a signal handler on a
//! small sigaltstack, and on a stack it switched to, all while pprofd profiles it.
//!
//! Prints `listening <addr>` once serving; then reads one command a line from stdin and
//! answers each with one line:
//! - `fork N`: forks N times while other threads create threads, allocate and create label
//!   sets; each child creates threads, allocates, creates a label set, checks it inherited no
//!   running profile and exits.
//!   Answers `forked N hung H failed F`.
//! - `sigprof default|ignore|handler`: sets SIGPROF's disposition; `raise-sigprof` sends the
//!   process SIGPROF; `sigprof-count` answers how often the host's own handler ran.
//! - `timer-signal default|handler`: resets pprofd's CPU timer signal to `SIG_DFL`, or
//!   installs the host's own handler for it (counted with SIGPROF's in `sigprof-count`);
//!   `timer-signal-holder` answers `holder host` while the host's handler is the one
//!   installed for that signal, `holder other` once another (pprofd's) is in front of it;
//!   `raise-timer-signal N` sends the process that signal N times, 2 ms apart, from this
//!   thread with the signal blocked here, so that other threads (pprofd's too) take them.
//! - `small-stack`, `altstack`, `switched`: runs busy, allocating code for 1.5 s on a thread
//!   with about 10 KiB of stack left, inside a SA_ONSTACK handler on an 8 KiB sigaltstack,
//!   and on a stack of its own with an unmapped page above it; answers `<command> done`.

use std::io::BufRead;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: pprofd::Allocator<std::alloc::System> = pprofd::Allocator::system();

static HOST_SIGPROFS: AtomicU64 = AtomicU64::new(0);
const BUSY: Duration = Duration::from_millis(1500);

fn main() {
    let server = pprofd::init_from_env().expect("valid PPROF_ADDR");
    let addr = server
        .as_ref()
        .map_or("none".into(), |s| s.local_addr().to_string());
    println!("listening {addr}");
    for _ in 0..2 {
        std::thread::Builder::new()
            .name("spinner".into())
            .spawn(|| loop {
                busy_allocating(Duration::from_millis(100));
            })
            .expect("spawn spinner");
    }
    for line in std::io::stdin().lock().lines() {
        let line = line.expect("stdin");
        let words: Vec<&str> = line.split_whitespace().collect();
        let answer = match words.as_slice() {
            ["fork", n] => fork_many(n.parse().expect("fork count")),
            ["sigprof", how] => {
                set_disposition(libc::SIGPROF, how);
                format!("sigprof {how}")
            }
            ["timer-signal", how] => {
                set_disposition(pprofd::cpu::timer_signal(), how);
                format!("timer-signal {how}")
            }
            ["timer-signal-holder"] => {
                let host = installed_handler(pprofd::cpu::timer_signal())
                    == host_sigprof as *const () as libc::sighandler_t;
                format!("holder {}", if host { "host" } else { "other" })
            }
            ["raise-sigprof"] => {
                // SAFETY: signalling this process with a signal whose disposition the host set.
                unsafe { libc::kill(libc::getpid(), libc::SIGPROF) };
                "raised".into()
            }
            ["raise-timer-signal", n] => {
                raise_timer_signal(n.parse().expect("signal count"));
                "raised".into()
            }
            ["sigprof-count"] => format!("sigprofs {}", HOST_SIGPROFS.load(Ordering::SeqCst)),
            ["small-stack"] => on_thread("small-stack", 256 << 10, || with_stack_left(10 << 10)),
            ["altstack"] => on_thread("altstack", 256 << 10, on_small_altstack),
            ["switched"] => on_thread("switched", 256 << 10, on_switched_stack),
            _ => format!("unknown command {line:?}"),
        };
        println!("{answer}");
    }
    drop(server);
}

/// Spins for `how_long`, allocating and freeing as it goes.
#[inline(never)]
fn busy_allocating(how_long: Duration) {
    let start = Instant::now();
    let mut kept = Vec::new();
    while start.elapsed() < how_long {
        let mut x = 0u64;
        for i in 0..20_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        kept.push(vec![x as u8; 256]);
        if kept.len() > 64 {
            kept.clear();
        }
    }
}

fn on_thread(name: &str, stack: usize, f: fn()) -> String {
    std::thread::Builder::new()
        .name(name.into())
        .stack_size(stack)
        .spawn(f)
        .expect("spawn")
        .join()
        .expect("the thread survives");
    format!("{name} done")
}

extern "C" fn host_sigprof(_: libc::c_int) {
    HOST_SIGPROFS.fetch_add(1, Ordering::SeqCst);
}

fn raise_timer_signal(n: usize) {
    let signo = pprofd::cpu::timer_signal();
    // SAFETY: a zeroed sigset_t initialised by sigemptyset; changes only this thread's mask.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, signo);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    for _ in 0..n {
        // SAFETY: signalling this process with a signal whose handler the host installed.
        unsafe { libc::kill(libc::getpid(), signo) };
        std::thread::sleep(Duration::from_millis(2));
    }
    // SAFETY: as above.
    unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
}

/// The handler installed for `signo` (or `SIG_DFL`, `SIG_IGN`).
fn installed_handler(signo: libc::c_int) -> libc::sighandler_t {
    // SAFETY: reads the disposition into a zeroed sigaction; changes nothing.
    unsafe {
        let mut current: libc::sigaction = std::mem::zeroed();
        assert_eq!(libc::sigaction(signo, std::ptr::null(), &mut current), 0);
        current.sa_sigaction
    }
}

fn set_disposition(signo: libc::c_int, how: &str) {
    let handler = match how {
        "default" => libc::SIG_DFL,
        "ignore" => libc::SIG_IGN,
        "handler" => host_sigprof as *const () as libc::sighandler_t,
        _ => panic!("unknown disposition {how}"),
    };
    // SAFETY: installs SIG_DFL, SIG_IGN or a plain, async-signal-safe handler.
    unsafe { libc::signal(signo, handler) };
}

// --- fork ---

static CHURN: AtomicBool = AtomicBool::new(false);

fn fork_many(n: usize) -> String {
    CHURN.store(true, Ordering::SeqCst);
    let churners: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(|| {
                while CHURN.load(Ordering::SeqCst) {
                    std::thread::spawn(|| std::hint::black_box(vec![1u8; 4096]).len())
                        .join()
                        .expect("churn thread");
                }
            })
        })
        .collect();
    // Label sets made in a tight loop hold the label registry's lock most of the time.
    let labeller = std::thread::spawn(|| {
        let mut round = 0u64;
        while CHURN.load(Ordering::SeqCst) {
            let labels = pprofd::Labels::new([("round", (round % 64).to_string())]);
            labels.scope(|| std::hint::black_box(round));
            round += 1;
        }
    });
    let (mut hung, mut failed) = (0, 0);
    for _ in 0..n {
        // SAFETY: the child only runs `child_work` and `_exit`s.
        match unsafe { libc::fork() } {
            0 => child_work(),
            -1 => failed += 1,
            // A deadlocked child never exits; a slow one on a loaded machine does, eventually.
            pid => match wait_with_deadline(pid, Duration::from_secs(20)) {
                Some(0) => {}
                Some(_) => failed += 1,
                None => hung += 1,
            },
        }
    }
    CHURN.store(false, Ordering::SeqCst);
    for churner in churners {
        churner.join().expect("churner");
    }
    labeller.join().expect("labeller");
    format!("forked {n} hung {hung} failed {failed}")
}

/// In the child: create threads and allocate (the paths that deadlocked), then check that no
/// profile was inherited. Exit status 0 when all is well.
fn child_work() -> ! {
    let spawned = (0..2).all(|_| raw_thread_allocates());
    let labelled = pprofd::Labels::new([("in", "child")]).scope(|| 1);
    let sampling_off = pprofd::heap::sample_rate() == 0;
    let cpu_free = pprofd::cpu::CpuProfile::start(100)
        .map(|p| drop(p.stop()))
        .is_ok();
    let status = if !spawned || labelled != 1 {
        2
    } else if !sampling_off {
        3
    } else if !cpu_free {
        4
    } else {
        0
    };
    // SAFETY: _exit ends the child without running the parent's atexit handlers.
    unsafe { libc::_exit(status) }
}

/// Creates a thread with `pthread_create` itself (through pprofd's hook of it, the path that
/// deadlocked) that allocates 64 KiB, and joins it. Not `std::thread::spawn`: since Rust 1.9x a
/// new std thread takes std's own thread-info lock (`stack_overflow::thread_info`), which one
/// of the parent's churning threads may hold at the fork, and that hang is std's, not
/// pprofd's (seen: 1 child in ~1,000, waiting in `set_current_info`).
fn raw_thread_allocates() -> bool {
    extern "C" fn allocate(_: *mut libc::c_void) -> *mut libc::c_void {
        std::hint::black_box(vec![7u8; 1 << 16]);
        std::ptr::null_mut()
    }
    let mut thread: libc::pthread_t = 0;
    // SAFETY: `allocate` has the signature pthread_create expects and ignores its argument;
    // default attributes; the thread is joined below.
    let created = unsafe {
        libc::pthread_create(
            &mut thread,
            std::ptr::null(),
            allocate,
            std::ptr::null_mut(),
        )
    };
    // SAFETY: `thread` was created above and is joined once.
    created == 0 && unsafe { libc::pthread_join(thread, std::ptr::null_mut()) } == 0
}

fn wait_with_deadline(pid: libc::pid_t, deadline: Duration) -> Option<i32> {
    let start = Instant::now();
    loop {
        let mut status = 0;
        // SAFETY: waiting for our own child without blocking.
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if rc == pid {
            return Some(if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                128
            });
        }
        if start.elapsed() > deadline {
            if std::env::var_os("HOST_SAFETY_DEBUG").is_some() {
                let out = std::fs::File::create(format!("/tmp/hang_{pid}.txt")).unwrap();
                let _ = std::process::Command::new("gdb")
                    .args([
                        "-p",
                        &pid.to_string(),
                        "-batch",
                        "-ex",
                        "thread apply all bt",
                    ])
                    .stdout(out)
                    .stderr(std::process::Stdio::null())
                    .status();
            }
            // SAFETY: killing and reaping our own hung child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return None;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

// --- little stack left ---

/// The calling thread's lowest stack address.
fn stack_floor() -> usize {
    // SAFETY: `attr` is filled by pthread_getattr_np, read, then destroyed.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        assert_eq!(libc::pthread_getattr_np(libc::pthread_self(), &mut attr), 0);
        let mut addr = std::ptr::null_mut();
        let mut size = 0;
        libc::pthread_attr_getstack(&attr, &mut addr, &mut size);
        libc::pthread_attr_destroy(&mut attr);
        addr as usize
    }
}

/// Recurses until about `left` bytes of stack remain, then runs busy for a while.
fn with_stack_left(left: usize) {
    let floor = stack_floor();
    descend(floor + left);
}

#[inline(never)]
fn descend(stop_at: usize) {
    let marker = 0u8;
    let here = std::hint::black_box(&marker) as *const u8 as usize;
    if here > stop_at + 512 {
        let pad = std::hint::black_box([0u8; 256]);
        descend(stop_at);
        std::hint::black_box(pad);
    } else {
        spin_and_allocate_shallow(BUSY);
    }
}

/// Busy work that itself uses little stack: a small allocation now and then.
#[inline(never)]
fn spin_and_allocate_shallow(how_long: Duration) {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < how_long {
        for i in 0..20_000u64 {
            n = std::hint::black_box(n.wrapping_mul(31).wrapping_add(i));
        }
        drop(std::hint::black_box(Box::new(n)));
    }
}

// --- a handler on a small sigaltstack ---

const ALT_STACK: usize = 8 << 10;

extern "C" fn busy_on_altstack(_: libc::c_int) {
    spin_and_allocate_shallow(BUSY);
}

fn on_small_altstack() {
    let mut memory = vec![0u8; ALT_STACK];
    let alt = libc::stack_t {
        ss_sp: memory.as_mut_ptr().cast(),
        ss_flags: 0,
        ss_size: ALT_STACK,
    };
    // SAFETY: `memory` outlives its use as this thread's alternate stack (it is removed below).
    unsafe {
        let mut old: libc::stack_t = std::mem::zeroed();
        assert_eq!(libc::sigaltstack(&alt, &mut old), 0);
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = busy_on_altstack as *const () as usize;
        action.sa_flags = libc::SA_ONSTACK;
        libc::sigemptyset(&mut action.sa_mask);
        assert_eq!(
            libc::sigaction(libc::SIGUSR2, &action, std::ptr::null_mut()),
            0
        );
        libc::raise(libc::SIGUSR2);
        let disable = libc::stack_t {
            ss_sp: std::ptr::null_mut(),
            ss_flags: libc::SS_DISABLE,
            ss_size: 0,
        };
        libc::sigaltstack(&disable, std::ptr::null_mut());
    }
    drop(memory);
}

// --- a switched stack with an unmapped page above it ---

const SWITCHED_STACK: usize = 64 << 10;

extern "C" fn busy_on_switched_stack() {
    spin_and_allocate_shallow(BUSY);
}

fn on_switched_stack() {
    let page = 4096;
    // SAFETY: a fresh private mapping; the page above the stack is unmapped again at once so
    // that a read past the stack's top faults, as between real coroutine stacks.
    unsafe {
        let base = libc::mmap(
            std::ptr::null_mut(),
            SWITCHED_STACK + page,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(base, libc::MAP_FAILED);
        let top = base as usize + SWITCHED_STACK;
        assert_eq!(libc::munmap(top as *mut libc::c_void, page), 0);
        call_on_stack(top - 64, busy_on_switched_stack);
        libc::munmap(base, SWITCHED_STACK);
    }
}

/// Calls `f` with the stack pointer at `top` (16-byte aligned below), back on the thread's
/// own stack afterwards.
///
/// # Safety
/// `top` must be the top of a writable region large enough for `f`.
#[cfg(target_arch = "x86_64")]
unsafe fn call_on_stack(top: usize, f: extern "C" fn()) {
    // SAFETY: r12 (callee-saved) keeps the old stack pointer across the call; the new stack
    // is valid per the caller.
    unsafe {
        std::arch::asm!(
            "mov r12, rsp",
            "mov rsp, {top}",
            "call {f}",
            "mov rsp, r12",
            top = in(reg) top & !15,
            f = in(reg) f,
            out("r12") _,
            clobber_abi("C"),
        );
    }
}

#[cfg(target_arch = "aarch64")]
unsafe fn call_on_stack(top: usize, f: extern "C" fn()) {
    // SAFETY: x19 (callee-saved) keeps the old stack pointer across the call; the new stack
    // is valid per the caller.
    unsafe {
        std::arch::asm!(
            "mov x19, sp",
            "mov sp, {top}",
            "blr {f}",
            "mov sp, x19",
            top = in(reg) top & !15,
            f = in(reg) f,
            out("x19") _,
            clobber_abi("C"),
        );
    }
}
