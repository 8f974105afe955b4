//! What a connection task waits for besides its client and its mailbox: the
//! session's next deadline and the server's shutdown.
//!
//! Both are registered once for the connection's life, not once per wake-up: a
//! task that built a `sleep_until` and a `watch::changed` in every `select!`
//! locked the timer wheel and the shutdown channel's waiter list for each
//! message it handled.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::time::Sleep;

/// A connection's timer for its session's next deadline.
pub(crate) struct Deadline {
    timer: Pin<Box<Sleep>>,
    /// When the timer is set for; `None` when it is not set (or has fired).
    at: Option<Instant>,
}

impl Deadline {
    pub(crate) fn new() -> Self {
        Deadline { timer: Box::pin(tokio::time::sleep(Duration::ZERO)), at: None }
    }

    /// Sets the timer for `deadline` if that comes before the time it is set for.
    /// A later deadline leaves it where it is: reading data pushes the ping
    /// deadline later at every wake-up, so the timer then fires early once, the
    /// caller's timer handler finds nothing due (it must look at the clock), and
    /// the next call sets it again.
    pub(crate) fn set(&mut self, deadline: Option<Instant>) {
        if let Some(d) = deadline {
            if self.at.is_none_or(|t| d < t) {
                self.timer.as_mut().reset(d.into());
                self.at = Some(d);
            }
        }
    }

    /// Completes when the timer fires (never while it is not set).
    pub(crate) async fn fired(&mut self) {
        if self.at.is_none() {
            return std::future::pending().await;
        }
        self.timer.as_mut().await;
        self.at = None;
    }
}

/// A connection's wait for the server's shutdown.
pub(crate) struct Shutdown(Option<Pin<Box<dyn Future<Output = ()> + Send>>>);

impl Shutdown {
    pub(crate) fn new(mut rx: watch::Receiver<bool>) -> Self {
        Shutdown(Some(Box::pin(async move {
            let _ = rx.changed().await;
        })))
    }

    /// Completes once, when the server starts shutting down (or its signal is gone).
    pub(crate) async fn signalled(&mut self) {
        match &mut self.0 {
            Some(f) => {
                f.as_mut().await;
                self.0 = None;
            }
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_timer_moves_only_earlier_and_fires_once() {
        let mut w = Deadline::new();
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        w.set(Some(t0 + ms(400)));
        // A later deadline does not move it; an earlier one does.
        w.set(Some(t0 + ms(800)));
        w.set(Some(t0 + ms(100)));
        w.fired().await;
        let fired = t0.elapsed();
        assert!(fired >= ms(100) && fired < ms(400), "fired after {fired:?}");
        // Fired: not set again until a deadline is given.
        assert!(tokio::time::timeout(ms(500), w.fired()).await.is_err());
        w.set(Some(Instant::now() + ms(10)));
        w.fired().await;
    }

    #[tokio::test]
    async fn the_shutdown_is_reported_once() {
        let (tx, rx) = watch::channel(false);
        let mut w = Shutdown::new(rx);
        tx.send(true).unwrap();
        w.signalled().await;
        let again = tokio::time::timeout(Duration::from_millis(50), w.signalled()).await;
        assert!(again.is_err(), "a second signalled() stays pending");
    }
}
