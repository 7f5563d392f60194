//! A team of worker threads for the low-precision kernels that wait for the next call by
//! spinning for a moment before they sleep.
//!
//! A tower's forward pass makes about ten parallel calls per block (packing, products,
//! attention), each a few microseconds to a millisecond long at batch 1. Waking a sleeping
//! rayon worker for each costs tens of microseconds in a VM, so at batch 1 two threads ran
//! slower than one (text 1 × 16 tokens, bf16: 133 against 150 texts/s). A team thread that
//! has just finished a call spins for [`SPIN`] and so is awake for the next one.
//!
//! One caller uses the team at a time; a call that finds it busy (several threads embedding at
//! once, as a server does) runs on the rayon pool as before. The caller works too: it takes
//! items from the same counter, so a call never waits for a sleeping thread to wake up, only
//! for the threads that joined it to finish their items.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock, TryLockError};
use std::time::{Duration, Instant};

/// How long a team thread spins for the next call before it sleeps: longer than the gaps
/// between a forward pass's parallel calls, short next to a scheduler's time slice, so that
/// the spinning costs little when no call follows. Text 1 × 16 tokens in bf16 ran at 205-217
/// texts/s with no spinning (the caller still never waits for a wake-up), 241-268 with 50 µs
/// and 267-271 with 500 µs; rayon's wake-ups gave 125-138.
const SPIN: Duration = Duration::from_micros(200);

/// At most this many team threads (beyond the caller).
const MAX_THREADS: usize = 255;

/// What a team thread runs for one call: `run(index)` with its index in the team.
struct Job<'a> {
    run: &'a (dyn Fn(usize) + Sync),
    /// The call's generation: a thread that meets the same job twice runs it once.
    generation: usize,
    /// Team threads with an index below this take part; the others skip the call.
    threads: usize,
    /// Set when a team thread's `run` panicked; the caller panics in turn.
    panicked: AtomicBool,
}

struct Shared {
    /// Bumped for every call, so that waiting threads notice one.
    generation: AtomicUsize,
    /// The current call, or null between calls. A thread counts itself in `active` before
    /// it reads this, and the caller nulls it before it waits for `active` to reach zero, so no
    /// thread can read a job after its caller returned.
    job: AtomicPtr<Job<'static>>,
    active: AtomicUsize,
    sleepers: AtomicUsize,
    sleep: Mutex<()>,
    wake: Condvar,
}

struct Team {
    shared: &'static Shared,
    /// Held by the one caller using the team; also guards the thread count.
    dispatch: Mutex<usize>,
    /// The process that started the threads: after a `fork` the child has none of them.
    pid: u32,
}

fn team() -> Option<&'static Team> {
    static TEAM: OnceLock<Team> = OnceLock::new();
    let team = TEAM.get_or_init(|| Team {
        shared: Box::leak(Box::new(Shared {
            generation: AtomicUsize::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            active: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
        })),
        dispatch: Mutex::new(0),
        pid: std::process::id(),
    });
    (team.pid == std::process::id()).then_some(team)
}

/// `seen` is the generation before the call that started the thread, so that the thread joins
/// that call too.
fn worker_loop(shared: &'static Shared, index: usize, mut seen: usize) {
    let mut last_run = seen;
    loop {
        seen = wait_for_call(shared, seen);
        shared.active.fetch_add(1, Ordering::SeqCst);
        let job = shared.job.load(Ordering::SeqCst);
        if !job.is_null() {
            // SAFETY: `job` is non-null while its caller is inside `run_on_team`, and the caller
            // does not return (so the job stays alive) until `active` is zero, which cannot
            // happen before this thread's decrement below.
            let job = unsafe { &*job };
            if index < job.threads && job.generation != last_run {
                last_run = job.generation;
                if catch_unwind(AssertUnwindSafe(|| (job.run)(index))).is_err() {
                    job.panicked.store(true, Ordering::Relaxed);
                }
            }
        }
        shared.active.fetch_sub(1, Ordering::Release);
    }
}

/// Waits until the generation differs from `seen`: spinning for [`SPIN`], then asleep.
fn wait_for_call(shared: &Shared, seen: usize) -> usize {
    let start = Instant::now();
    let mut spins = 0u32;
    loop {
        let g = shared.generation.load(Ordering::Acquire);
        if g != seen {
            return g;
        }
        std::hint::spin_loop();
        spins += 1;
        if spins.is_multiple_of(64) && start.elapsed() > SPIN {
            break;
        }
    }
    let mut guard = shared.sleep.lock().unwrap_or_else(|e| e.into_inner());
    shared.sleepers.fetch_add(1, Ordering::SeqCst);
    let g = loop {
        let g = shared.generation.load(Ordering::SeqCst);
        if g != seen {
            break g;
        }
        guard = shared.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
    };
    shared.sleepers.fetch_sub(1, Ordering::SeqCst);
    g
}

/// Nulls the job and waits for the team threads inside it, also when the caller's own share
/// panics (the job lives in the caller's frame).
struct Retire<'a>(&'a Shared);

impl Drop for Retire<'_> {
    fn drop(&mut self) {
        self.0.job.store(std::ptr::null_mut(), Ordering::SeqCst);
        while self.0.active.load(Ordering::SeqCst) != 0 {
            std::hint::spin_loop();
        }
    }
}

/// Runs `run(0)` on the calling thread and `run(1..threads)` on team threads, and returns
/// when all have returned; `None` (nothing run) when the team is busy with another caller or
/// cannot be used in this process.
pub(super) fn run_on_team(threads: usize, run: &(dyn Fn(usize) + Sync)) -> Option<()> {
    let team = team()?;
    let helpers = threads.saturating_sub(1).min(MAX_THREADS);
    let mut started = match team.dispatch.try_lock() {
        Ok(g) => g,
        Err(TryLockError::WouldBlock) => return None,
        Err(TryLockError::Poisoned(e)) => e.into_inner(),
    };
    while *started < helpers {
        let index = *started + 1;
        let shared = team.shared;
        let seen = shared.generation.load(Ordering::Relaxed);
        let spawned = std::thread::Builder::new()
            .name(format!("gclip-kernel-{index}"))
            .spawn(move || worker_loop(shared, index, seen));
        if spawned.is_err() {
            break;
        }
        *started += 1;
    }
    let shared = team.shared;
    // Only the holder of `dispatch` changes the generation.
    let generation = shared.generation.load(Ordering::Relaxed).wrapping_add(1);
    let job = Job {
        run,
        generation,
        threads: helpers.min(*started) + 1,
        panicked: AtomicBool::new(false),
    };
    let job_ptr = std::ptr::from_ref(&job).cast::<Job<'static>>().cast_mut();
    shared.job.store(job_ptr, Ordering::SeqCst);
    let retire = Retire(shared);
    shared.generation.store(generation, Ordering::SeqCst);
    if shared.sleepers.load(Ordering::SeqCst) > 0 {
        let _guard = shared.sleep.lock().unwrap_or_else(|e| e.into_inner());
        shared.wake.notify_all();
    }
    run(0);
    drop(retire);
    if job.panicked.load(Ordering::Relaxed) {
        resume_unwind(Box::new("a kernel thread panicked"));
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::super::on_workers;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Every item runs exactly once, however many workers, also after the team has slept.
    fn check_items_once(items: usize, workers: usize) {
        let counts: Vec<AtomicUsize> = (0..items).map(|_| AtomicUsize::new(0)).collect();
        let inits = AtomicUsize::new(0);
        on_workers(
            items,
            workers,
            || inits.fetch_add(1, Ordering::Relaxed),
            |i, _| {
                counts[i].fetch_add(1, Ordering::Relaxed);
            },
        );
        for (i, c) in counts.iter().enumerate() {
            assert_eq!(
                c.load(Ordering::Relaxed),
                1,
                "item {i} of {items}, {workers} workers"
            );
        }
        let inits = inits.load(Ordering::Relaxed);
        assert!(
            inits >= 1 && inits <= workers.max(1),
            "{inits} states for {workers} workers"
        );
    }

    #[test]
    fn every_item_runs_once_on_the_team() {
        for round in 0..300 {
            check_items_once(round % 37, 1 + round % 4);
        }
        // Long enough for the team threads to fall asleep: the next call must wake them or do
        // the work itself.
        std::thread::sleep(std::time::Duration::from_millis(5));
        check_items_once(64, 3);
    }

    #[test]
    fn a_long_call_runs_on_more_than_one_thread() {
        let threads = std::sync::Mutex::new(std::collections::HashSet::new());
        on_workers(
            64,
            2,
            || (),
            |_, ()| {
                std::thread::sleep(std::time::Duration::from_millis(1));
                threads
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(std::thread::current().id());
            },
        );
        assert_eq!(threads.into_inner().unwrap_or_default().len(), 2);
    }

    #[test]
    fn concurrent_callers_each_finish_their_own_items() {
        std::thread::scope(|s| {
            for t in 0..4 {
                s.spawn(move || {
                    for round in 0..100 {
                        check_items_once(10 + (t + round) % 20, 2);
                    }
                });
            }
        });
    }

    #[test]
    fn a_panic_in_an_item_reaches_the_caller_and_the_team_stays_usable() {
        for _ in 0..20 {
            let result = std::panic::catch_unwind(|| {
                on_workers(
                    64,
                    2,
                    || (),
                    |i, ()| {
                        if i == 40 {
                            panic!("item 40");
                        }
                        std::hint::black_box(i);
                    },
                );
            });
            assert!(result.is_err());
        }
        check_items_once(50, 2);
    }
}
