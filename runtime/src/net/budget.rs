//! budget: the server-wide bound on the memory requests in flight may hold
//! (`--request-memory-mib`), checked as their bodies arrive, before they are read.
//!
//! Each request is charged [`BODY_COST`] times its body: the body itself, the tensors decoded
//! from it, and their copy in the plugin's memory, which all live until its answer. A body
//! with a `Content-Length` is charged for all of it before a byte is read; a chunked one (and
//! gRPC's) as its parts arrive. Past the budget the request is refused at once, 503 with
//! `Retry-After: 1` (gRPC: UNAVAILABLE), and its body is never read; a body that could never
//! fit, 413. The charge is given back when the request's answer is ready. A stream of gRPC
//! messages that lasts as long as its client (`ModelStreamInfer`) is charged for the message
//! arriving, not for all it ever sent: each message's charge replaces the one before.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};
use tokio::sync::Semaphore;

/// What a request is charged per byte of body: the body, the tensors decoded from it, and
/// the plugin's copy of them.
pub const BODY_COST: usize = 3;

/// The budget, counted in KiB.
#[derive(Clone)]
pub struct Budget {
    kib: Arc<Semaphore>,
    total_kib: u32,
    /// Bytes charged now, for `/metrics`.
    gauge: prometheus_client::metrics::gauge::Gauge,
}

/// Why a request was refused.
#[derive(Debug)]
pub enum Refused {
    /// The budget is spent by other requests now: try again later (503).
    Busy(String),
    /// The body would need more than the whole budget (413).
    TooLarge(String),
}

impl Budget {
    /// A budget of `bytes`; `gauge` follows what is charged.
    pub fn new(bytes: usize, gauge: prometheus_client::metrics::gauge::Gauge) -> Self {
        let total_kib = u32::try_from(bytes >> 10).unwrap_or(u32::MAX).max(1);
        Self { kib: Arc::new(Semaphore::new(total_kib as usize)), total_kib, gauge }
    }

    /// Show what is charged now.
    fn update(&self) {
        let charged = u64::from(self.total_kib - self.kib.available_permits() as u32) << 10;
        self.gauge.set(charged as i64);
    }

    /// A charge for one request, with `declared` body bytes charged now if known.
    pub fn charge(&self, declared: Option<u64>) -> Result<Arc<Charge>, Refused> {
        let charge = Arc::new(Charge { budget: self.clone(), kib: AtomicU32::new(0) });
        if let Some(bytes) = declared {
            charge.add(bytes as usize)?;
        }
        Ok(charge)
    }
}

/// What one request holds of the budget; given back when the last handle on it drops (the
/// request's body and the request itself).
pub struct Charge {
    budget: Budget,
    kib: AtomicU32,
}

impl Charge {
    /// Charge `bytes` in place of all charged so far (a stream's next message).
    fn replace(&self, bytes: usize) -> Result<(), Refused> {
        let held = self.kib.swap(0, Ordering::Relaxed);
        self.budget.kib.add_permits(held as usize);
        self.add(bytes)
    }

    /// Charge `bytes` more of body.
    fn add(&self, bytes: usize) -> Result<(), Refused> {
        let cost = bytes.saturating_mul(BODY_COST).div_ceil(1024);
        let cost = u32::try_from(cost).unwrap_or(u32::MAX);
        let total = self.budget.total_kib;
        if cost.saturating_add(self.kib.load(Ordering::Relaxed)) > total {
            return Err(Refused::TooLarge(format!(
                "the request would hold more memory than the server allows all requests together: its body \
                 counts {BODY_COST} times its size against --request-memory-mib ({} MiB)",
                total >> 10
            )));
        }
        match self.budget.kib.try_acquire_many(cost) {
            Ok(permit) => {
                permit.forget();
                self.kib.fetch_add(cost, Ordering::Relaxed);
                self.budget.update();
                Ok(())
            }
            Err(_) => Err(Refused::Busy(format!(
                "the server is holding as much request data as it allows (--request-memory-mib {} MiB); try \
                 again later",
                total >> 10
            ))),
        }
    }
}

/// Bodies from this size on are followed by a trim of the allocator's heaps.
const TRIM_AFTER_KIB: u32 = (1 << 20) * BODY_COST as u32 / 1024;

impl Drop for Charge {
    fn drop(&mut self) {
        let kib = *self.kib.get_mut();
        self.budget.kib.add_permits(kib as usize);
        self.budget.update();
        if kib >= TRIM_AFTER_KIB {
            crate::allocator::trim_soon();
        }
    }
}

/// A request body that charges what arrives to its request's [`Charge`] (a chunked body, or
/// gRPC's); past the budget it ends in an error, a `tonic::Status` that gRPC answers as it is
/// and REST as 503 (UNAVAILABLE: busy) or 413 (RESOURCE_EXHAUSTED: it could never fit).
pub struct Charged<B> {
    body: B,
    charge: Arc<Charge>,
    /// Whether the whole body was charged up front (its `Content-Length`).
    prepaid: bool,
    /// For a stream of gRPC messages: where the message arriving ends.
    messages: Option<Messages>,
}

impl<B> Charged<B> {
    /// `body`, charged to `charge` as it arrives unless `prepaid`.
    pub fn new(body: B, charge: Arc<Charge>, prepaid: bool) -> Self {
        Self { body, charge, prepaid, messages: None }
    }

    /// `body`, a stream of gRPC messages: charged for the message arriving, each new
    /// message's charge replacing the last.
    pub fn messages(body: B, charge: Arc<Charge>) -> Self {
        Self { body, charge, prepaid: false, messages: Some(Messages::default()) }
    }
}

/// Where gRPC's length-prefixed messages (a flag byte, a 4-byte big-endian length, the
/// message) begin in a body read frame by frame.
#[derive(Default)]
struct Messages {
    /// Bytes of the message being read still to come.
    left: usize,
    /// The part of the next message's 5-byte prefix read so far.
    prefix: Vec<u8>,
}

impl Messages {
    /// Reads `data` through; whether it began a new message.
    fn feed(&mut self, mut data: &[u8]) -> bool {
        let begins = self.left == 0 && self.prefix.is_empty();
        while !data.is_empty() {
            if self.left > 0 {
                let take = self.left.min(data.len());
                (self.left, data) = (self.left - take, &data[take..]);
                continue;
            }
            let take = (5 - self.prefix.len()).min(data.len());
            self.prefix.extend_from_slice(&data[..take]);
            data = &data[take..];
            if let Ok(prefix) = <[u8; 5]>::try_from(self.prefix.as_slice()) {
                self.left = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
                self.prefix.clear();
            }
        }
        begins
    }
}

impl<B> Body for Charged<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        let Poll::Ready(Some(Ok(frame))) = polled else {
            return polled.map(|f| f.map(|f| f.map_err(Into::into)));
        };
        let this = &mut *self;
        let charged = match (frame.data_ref(), this.messages.as_mut()) {
            (Some(data), Some(messages)) => match messages.feed(data) {
                true => this.charge.replace(data.len()),
                false => this.charge.add(data.len()),
            },
            (Some(data), None) if !this.prepaid => this.charge.add(data.len()),
            _ => Ok(()),
        };
        if let Err(refused) = charged {
            let status = match refused {
                Refused::Busy(m) => tonic::Status::unavailable(m),
                Refused::TooLarge(m) => tonic::Status::resource_exhausted(m),
            };
            return Poll::Ready(Some(Err(Box::new(status))));
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_are_refused_past_the_budget_and_given_back_when_dropped() {
        let budget = Budget::new(12 << 20, Default::default());
        let first = budget.charge(Some(2 << 20)).unwrap();
        let second = budget.charge(Some(2 << 20)).unwrap();
        assert_eq!(budget.gauge.get(), 12 << 20, "two bodies of 2 MiB count 3 times each");
        assert!(matches!(budget.charge(Some(1)), Err(Refused::Busy(_))));
        drop(first);
        assert_eq!(budget.gauge.get(), 6 << 20);
        // A chunked body is charged as it arrives; past the budget it fails.
        let chunked = budget.charge(None).unwrap();
        chunked.add(2 << 20).unwrap();
        assert!(matches!(chunked.add(1), Err(Refused::Busy(_))));
        drop((second, chunked));
        assert_eq!(budget.gauge.get(), 0);
        // A body that needs more than the whole budget is too large, not busy.
        assert!(matches!(budget.charge(Some(5 << 20)), Err(Refused::TooLarge(_))));
        // A stream's next message is charged in place of the last.
        let stream = budget.charge(None).unwrap();
        stream.add(3 << 20).unwrap();
        stream.replace(1 << 20).unwrap();
        assert_eq!(budget.gauge.get(), 3 << 20);
    }

    #[test]
    fn messages_are_found_across_frames() {
        let mut messages = Messages::default();
        // A 3-byte message in one frame; a 4-byte one whose prefix is split over two.
        assert!(messages.feed(&[0, 0, 0, 0, 3, 1, 2, 3]));
        assert!(messages.feed(&[0, 0, 0]));
        assert!(!messages.feed(&[0, 4, 1, 2]));
        assert!(!messages.feed(&[3, 4]));
        // An empty message, then the start of the next in the same frame.
        assert!(messages.feed(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 9, 1]));
        assert!(!messages.feed(&[2; 8]));
        assert!(messages.feed(&[0, 0, 0, 0, 1, 7]));
    }
}
