//! Freed memory kept for reuse while training.
//!
//! A training step allocates and frees the same large buffers at every step: activations,
//! gradients, the operands packed for the bf16 kernels. glibc's malloc serves allocations above
//! its mmap threshold (dynamic, at most 32 MB) with fresh mappings that it unmaps when they are
//! freed, and gives the top of its heap back to the system beyond its trim threshold. So each
//! step faulted in and zeroed its pages again, and every unmap interrupted the other threads to
//! flush their TLBs: on ViT-B/32 at batch 64 (bf16) a third of the step's CPU time was system
//! time (28 of 109 s; docs/BENCHMARKS.md, "Training"). With both thresholds raised, freed
//! memory stays in the heap and the next step reuses it: system time fell to 7 s and the step
//! ran about 1.3× faster, while the peak resident memory grew by under 1 % (a step's largest
//! allocations recur, so the heap does not grow from step to step).

/// Raises malloc's mmap and trim thresholds to their largest values, for the whole process;
/// returns whether the allocator took both (glibc on Linux; elsewhere nothing changes).
pub fn retain_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `mallopt` only sets malloc's tuning parameters, under malloc's own lock; any
        // value is accepted or refused (returning 0), never undefined.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, i32::MAX) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn glibc_takes_the_thresholds() {
        let taken = super::retain_freed_memory();
        assert_eq!(taken, cfg!(all(target_os = "linux", target_env = "gnu")));
        // Memory still comes and goes normally afterwards.
        let v = vec![1u8; 64 << 20];
        assert_eq!(v.iter().map(|&b| b as usize).sum::<usize>(), 64 << 20);
    }
}
