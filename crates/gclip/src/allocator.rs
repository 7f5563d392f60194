//! Freed memory kept for reuse, for the whole process.
//!
//! Inference and training allocate and free the same large buffers at every batch or step:
//! activations, layer outputs (ViT-B/32's fc1 at batch 32: 20 MB), gradients, the operands
//! packed for the low-precision kernels. glibc's malloc serves allocations above its mmap
//! threshold (dynamic, at most 32 MB) with fresh mappings that it unmaps when they are freed, and
//! gives the top of its heap back to the system beyond its trim threshold. So each batch faulted
//! in and zeroed its pages again, and every unmap interrupted the other threads to flush their
//! TLBs: on ViT-B/32 training at batch 64 (bf16) a third of the step's CPU time was system time
//! (28 of 109 s; docs/BENCHMARKS.md, "Training"); in the fp32 image tower at batch 32 on Zen 3,
//! zeroing fresh pages was 4.4 % of the samples. With both thresholds raised, freed memory
//! stays in the heap and the next batch reuses it: the training step ran about 1.3× faster, and
//! in that fp32 image tower the zeroing fell to 0.9 % of the samples (session 32), while the
//! peak resident memory of a training run grew by under 1 % (a batch's largest allocations recur,
//! so the heap does not grow from batch to batch).
//! The memory a process once used stays with it until it exits, which is what a server or a
//! long embedding run wants anyway.

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
