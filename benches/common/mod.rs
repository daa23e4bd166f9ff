//! Shared by the criterion benches: the binary's allocator and a driver for futures that never
//! wait.
#![allow(dead_code)] // each bench binary uses a different part

use std::future::Future;

/// The gateway binary's allocator, so that time and memory are measured as it runs.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Drives a memory-store future, which never waits, without a runtime's overhead.
pub fn ready<F: Future>(f: F) -> F::Output {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match std::pin::pin!(f).poll(&mut cx) {
        std::task::Poll::Ready(out) => out,
        std::task::Poll::Pending => unreachable!("the memory store never waits"),
    }
}
