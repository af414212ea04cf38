//! Reading buffers back to the host: one async path on `map_async` for every read. The browser
//! awaits it (WebGPU has no blocking poll; the map callback fires from the page's event loop);
//! native code waits for the submission first, so the same future is ready when awaited, and the
//! blocking `read_*` forms run it with [`block_on`]. Those forms do not exist on wasm32, so core
//! code that would block in a browser does not compile there.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use super::{Gpu, GpuBuf, GpuError};

/// Runs a read's future to its end on this thread (native only: a browser tab cannot block).
#[cfg(not(target_arch = "wasm32"))]
pub fn block_on<F: Future>(future: F) -> F::Output {
    pollster::block_on(future)
}

/// The outcome of one `map_async`, passed from wgpu's callback to the task that awaits it.
#[derive(Default)]
struct MapState {
    result: Option<Result<(), wgpu::BufferAsyncError>>,
    waker: Option<Waker>,
}

/// Resolves when the map callback has run; wakes the awaiting task if it ran later.
pub(crate) struct MapFuture(Arc<Mutex<MapState>>);

impl MapFuture {
    /// The future and the callback that completes it (handed to `map_async`).
    pub(crate) fn new() -> (
        MapFuture,
        impl FnOnce(Result<(), wgpu::BufferAsyncError>) + Send + 'static,
    ) {
        let state = Arc::new(Mutex::new(MapState::default()));
        let shared = Arc::clone(&state);
        let complete = move |result| {
            let waker = {
                let mut state = shared.lock().unwrap();
                state.result = Some(result);
                state.waker.take()
            };
            // Woken outside the lock: an executor may poll the future at once.
            if let Some(waker) = waker {
                waker.wake();
            }
        };
        (MapFuture(state), complete)
    }
}

impl Future for MapFuture {
    type Output = Result<(), wgpu::BufferAsyncError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.0.lock().unwrap();
        match state.result.take() {
            Some(result) => Poll::Ready(result),
            None => {
                state.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl Gpu {
    /// Reads `buf` back: submits the open encoder, then resolves once the copy is mapped.
    /// Native waits for the submission inside (a blocking poll); the browser yields instead.
    pub async fn read_bytes_async(&self, buf: &GpuBuf) -> Result<Vec<u8>, GpuError> {
        assert!(
            !self.dry(),
            "a read while a step is recorded dry for a dispatch plan (src/gpu/plan.rs)"
        );
        let size = (buf.len() * 4) as u64;
        if size == 0 {
            return Ok(Vec::new());
        }
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size,
            usage: wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::MAP_READ,
            mapped_at_creation: false,
        });
        let index = {
            let mut rec = self.recorder.lock().unwrap();
            rec.encoder(&self.device).copy_buffer_to_buffer(
                buf.buffer(),
                buf.byte_offset(),
                &staging,
                0,
                size,
            );
            rec.reads += 1;
            rec.submit(&self.queue)
        };
        let (mapped, complete) = MapFuture::new();
        staging.slice(..).map_async(wgpu::MapMode::Read, complete);
        // A failed map is usually the echo of an earlier device error: report the cause.
        let failed = |e: String| self.check_errors().err().unwrap_or(GpuError::Map(e));
        #[cfg(not(target_arch = "wasm32"))]
        self.device
            .poll(wgpu::PollType::Wait {
                submission_index: index,
                timeout: None,
            })
            .map_err(|e| failed(e.to_string()))?;
        #[cfg(target_arch = "wasm32")]
        let _ = index;
        mapped.await.map_err(|e| failed(e.to_string()))?;
        // Checked after the wait: errors of the submitted work are reported by then.
        self.check_errors()?;
        let bytes = staging
            .slice(..)
            .get_mapped_range()
            .map_err(|e| failed(e.to_string()))?
            .to_vec();
        staging.unmap();
        Ok(bytes)
    }

    pub async fn read_f32_async(&self, buf: &GpuBuf) -> Result<Vec<f32>, GpuError> {
        Ok(bytemuck::pod_collect_to_vec(
            &self.read_bytes_async(buf).await?,
        ))
    }

    pub async fn read_u32_async(&self, buf: &GpuBuf) -> Result<Vec<u32>, GpuError> {
        Ok(bytemuck::pod_collect_to_vec(
            &self.read_bytes_async(buf).await?,
        ))
    }

    /// Reads several buffers with one submit and one wait.
    pub async fn read_many_u32_async(&self, bufs: &[&GpuBuf]) -> Result<Vec<Vec<u32>>, GpuError> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total == 0 {
            return Ok(bufs.iter().map(|_| Vec::new()).collect());
        }
        let joined = self.alloc(total);
        let mut at = 0;
        {
            let mut rec = self.recorder.lock().unwrap();
            let epoch = rec.epoch;
            let encoder = rec.encoder(&self.device);
            for b in bufs {
                if !b.is_empty() {
                    encoder.copy_buffer_to_buffer(
                        b.buffer(),
                        b.byte_offset(),
                        joined.buffer(),
                        (at * 4) as u64,
                        (b.len() * 4) as u64,
                    );
                }
                at += b.len();
            }
            joined
                .inner
                .last_bound_epoch
                .store(epoch, Ordering::Relaxed);
        }
        let words = self.read_u32_async(&joined).await?;
        let mut out = Vec::with_capacity(bufs.len());
        let mut at = 0;
        for b in bufs {
            out.push(words[at..at + b.len()].to_vec());
            at += b.len();
        }
        Ok(out)
    }
}

/// The blocking forms, for native code: each runs its `_async` twin with [`block_on`].
#[cfg(not(target_arch = "wasm32"))]
impl Gpu {
    pub fn read_bytes(&self, buf: &GpuBuf) -> Result<Vec<u8>, GpuError> {
        block_on(self.read_bytes_async(buf))
    }

    pub fn read_f32(&self, buf: &GpuBuf) -> Result<Vec<f32>, GpuError> {
        block_on(self.read_f32_async(buf))
    }

    pub fn read_u32(&self, buf: &GpuBuf) -> Result<Vec<u32>, GpuError> {
        block_on(self.read_u32_async(buf))
    }

    pub fn read_many_u32(&self, bufs: &[&GpuBuf]) -> Result<Vec<Vec<u32>>, GpuError> {
        block_on(self.read_many_u32_async(bufs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    /// Counts wake-ups, as an executor would schedule the task again.
    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// The browser's order: the task awaits first, the map callback runs later from the event
    /// loop; the task must be woken once and then see the map's result.
    #[test]
    fn map_future_wakes_the_task_when_the_callback_runs_after_the_first_poll() {
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&counter));
        let mut cx = Context::from_waker(&waker);
        let (mut mapped, complete) = MapFuture::new();
        assert!(Pin::new(&mut mapped).poll(&mut cx).is_pending());
        assert!(Pin::new(&mut mapped).poll(&mut cx).is_pending());
        assert_eq!(counter.0.load(Ordering::SeqCst), 0);
        complete(Err(wgpu::BufferAsyncError));
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
        assert!(matches!(
            Pin::new(&mut mapped).poll(&mut cx),
            Poll::Ready(Err(wgpu::BufferAsyncError))
        ));
    }

    /// Native's order: the callback ran during the device poll, before the first await.
    #[test]
    fn map_future_is_ready_at_once_when_the_callback_ran_first() {
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&counter));
        let (mut mapped, complete) = MapFuture::new();
        complete(Ok(()));
        let polled = Pin::new(&mut mapped).poll(&mut Context::from_waker(&waker));
        assert!(matches!(polled, Poll::Ready(Ok(()))));
        assert_eq!(counter.0.load(Ordering::SeqCst), 0);
    }
}
