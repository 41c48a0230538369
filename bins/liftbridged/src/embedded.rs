//! The embedded NATS server as the broker uses it: interest and in-process subscriptions.

use std::pin::Pin;
use std::task::{Context, Poll};

use broker::{LocalSubscribe, NatsMessage};
use futures_util::Stream;

/// [`broker::EmbeddedNats`] over a handle of the server running in this process.
pub(crate) struct Embedded(pub natsd::Handle);

impl broker::EmbeddedNats for Embedded {
    fn listened_by_others(&self, subject: &str, except: &str) -> bool {
        self.0.listened_by_others(subject, except)
    }

    fn subscribe(
        &self,
        req: LocalSubscribe<'_>,
    ) -> Result<Pin<Box<dyn broker::LocalSubscription>>, String> {
        let opts = natsd::LocalOptions {
            name: req.name.to_owned(),
            echo: false,
            max_pending: req.max_pending,
            never_wait: req.never_wait.to_vec(),
        };
        self.0
            .subscribe_local(req.subject, req.queue, opts)
            .map(|s| Box::pin(Local(s)) as Pin<Box<dyn broker::LocalSubscription>>)
            .map_err(|e| e.to_string())
    }
}

struct Local(natsd::LocalSubscription);

impl Stream for Local {
    type Item = NatsMessage;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<NatsMessage>> {
        Pin::new(&mut self.0).poll_next(cx).map(|m| {
            m.map(|m| NatsMessage {
                subject: m.subject,
                reply: m.reply,
                payload: m.payload,
            })
        })
    }
}

impl broker::LocalSubscription for Local {
    fn dropped(&self) -> u64 {
        self.0.dropped()
    }

    fn close(&mut self) {
        self.0.close();
    }
}
