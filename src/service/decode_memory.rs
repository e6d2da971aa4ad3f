//! The memory that image decodes in flight may take together (`--max-decode-bytes`).
//!
//! Each decode may need up to 8 bytes a pixel plus decoder scratch space, and tokio's blocking pool would run up
//! to 512 of them at once: sixteen 40 Mpx 16-bit PNGs of 0.3 MB each would take several GB. A request reserves
//! what its images may take (read from their headers) before decoding and keeps it until preprocessing is done;
//! requests beyond the budget wait their turn, up to their deadline.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::ApiError;

/// Reservations are counted in MiB, so that a u32 of permits covers any budget.
const UNIT_BYTES: u64 = 1 << 20;

pub struct DecodeMemory {
    units: Arc<Semaphore>,
    total_units: u32,
}

impl DecodeMemory {
    pub fn new(max_bytes: u64) -> DecodeMemory {
        let total_units =
            u32::try_from(max_bytes.div_ceil(UNIT_BYTES)).unwrap_or(u32::MAX).clamp(1, Semaphore::MAX_PERMITS as u32);
        DecodeMemory { units: Arc::new(Semaphore::new(total_units as usize)), total_units }
    }

    /// Reserves `bytes` of decode memory, waiting at most `wait` for it; released when the permit is dropped.
    /// A decode larger than the whole budget (an image near `--max-image-pixels` on a small budget) waits until
    /// it can run alone.
    pub async fn reserve(&self, bytes: u64, wait: Duration) -> Result<OwnedSemaphorePermit, ApiError> {
        let units = u32::try_from(bytes.div_ceil(UNIT_BYTES)).unwrap_or(u32::MAX).clamp(1, self.total_units);
        match tokio::time::timeout(wait, Arc::clone(&self.units).acquire_many_owned(units)).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) => Err(ApiError::unavailable("image decoding has stopped: the server is shutting down")),
            Err(_) => Err(ApiError::overloaded(
                format!(
                    "image decodes in flight hold the memory limit of {} MiB (--max-decode-bytes) for longer than \
                     this request's deadline; retry later",
                    self.total_units
                ),
                1,
            )),
        }
    }

    /// Bytes reserved right now (for the metric).
    pub fn reserved_bytes(&self) -> u64 {
        u64::from(self.total_units - self.units.available_permits() as u32) * UNIT_BYTES
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::error::ErrorKind;

    #[tokio::test]
    async fn decodes_beyond_the_budget_wait_and_a_huge_one_runs_alone() {
        let memory = DecodeMemory::new(100 * UNIT_BYTES);
        let wait = Duration::from_millis(20);
        let first = memory.reserve(60 * UNIT_BYTES, wait).await.unwrap();
        assert_eq!(memory.reserved_bytes(), 60 * UNIT_BYTES);
        let err = memory.reserve(60 * UNIT_BYTES, wait).await.unwrap_err();
        assert!(err.kind == ErrorKind::Overloaded && err.message.contains("--max-decode-bytes"), "{err:?}");
        let small = memory.reserve(1, wait).await.unwrap();
        drop((first, small));
        let huge = memory.reserve(u64::MAX, wait).await.unwrap();
        assert_eq!(memory.reserved_bytes(), 100 * UNIT_BYTES);
        assert!(memory.reserve(1, wait).await.is_err());
        drop(huge);
        assert_eq!(memory.reserved_bytes(), 0);
    }
}
