//! A subscription's consumer: consumes its queue with manual acks and prefetch, runs the
//! handler for each delivery, and settles it (ack, retry through the retry queue, or dead
//! letter). When the connection breaks it waits for the supervisor's next link and resumes.

use std::sync::Arc;
use std::time::Duration;

use domain::events::{BusError, Delivery, EventHandler, Subscription};
use futures_lite::StreamExt;
use lapin::BasicProperties;
use lapin::message::Delivery as AmqpDelivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::FieldTable;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{Instrument, debug, info, info_span, warn};

use super::codec::{self, short};
use super::link::Link;
use super::topology::millis;
use super::{Shared, lapin_error, stopped};
use crate::backoff::Backoff;
use crate::rules::{Settle, call_handler, settle};

/// How long a stopping consumer lets running handlers finish before it closes its channel.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The pause before handing back a message whose retry or dead-letter copy could not be
/// published, so a lasting failure does not spin.
const REQUEUE_PAUSE: Duration = Duration::from_secs(1);

pub(super) async fn run(
    shared: Arc<Shared>,
    subscription: Subscription,
    handler: Arc<dyn EventHandler>,
    mut stop: watch::Receiver<bool>,
) {
    let subscription = Arc::new(subscription);
    let mut links = shared.link.clone();
    let mut backoff = Backoff::new(shared.config.reconnect_min, shared.config.reconnect_max);
    loop {
        let link = tokio::select! {
            link = next_link(&mut links) => link,
            () = stopped(&mut stop) => return,
        };
        // The supervisor is gone: the bus was dropped.
        let Some(link) = link else { return };
        match consume(
            &shared,
            &link,
            &subscription,
            &handler,
            &mut stop,
            &mut backoff,
        )
        .await
        {
            Ok(()) => return,
            Err(error) => {
                let delay = backoff.next_delay();
                warn!(%error, retry_in_ms = millis(delay), "consumer interrupted; resuming");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = stopped(&mut stop) => return,
                }
            }
        }
    }
}

async fn next_link(links: &mut watch::Receiver<Option<Arc<Link>>>) -> Option<Arc<Link>> {
    links
        .wait_for(|link| link.as_ref().is_some_and(|l| l.usable()))
        .await
        .ok()
        .and_then(|link| link.clone())
}

/// Consumes on one link until it breaks (`Err`) or the bus stops (`Ok`).
async fn consume(
    shared: &Arc<Shared>,
    link: &Arc<Link>,
    subscription: &Arc<Subscription>,
    handler: &Arc<dyn EventHandler>,
    stop: &mut watch::Receiver<bool>,
    backoff: &mut Backoff,
) -> Result<(), BusError> {
    let topology = &shared.topology;
    let channel = link
        .connection
        .create_channel()
        .await
        .map_err(lapin_error)?;
    // Redeclared on every start: cheap, idempotent, and it recreates the queues if the
    // broker lost them.
    topology
        .declare_subscription(&channel, subscription)
        .await?;
    channel
        .basic_qos(subscription.prefetch, BasicQosOptions::default())
        .await
        .map_err(lapin_error)?;
    let mut consumer = channel
        .basic_consume(
            short(&topology.queue(&subscription.queue))?,
            short("")?,
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(lapin_error)?;
    info!("consuming");
    backoff.reset();

    // Prefetch bounds how many deliveries are in here at once.
    let mut in_flight = JoinSet::new();
    let outcome = loop {
        tokio::select! {
            delivery = consumer.next() => match delivery {
                Some(Ok(delivery)) => {
                    in_flight.spawn(
                        handle_delivery(
                            Arc::clone(shared),
                            Arc::clone(link),
                            Arc::clone(subscription),
                            Arc::clone(handler),
                            delivery,
                        )
                        .in_current_span(),
                    );
                }
                Some(Err(error)) => break Err(lapin_error(error)),
                None => break Err(BusError::Unavailable("the broker cancelled the consumer".into())),
            },
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
            () = stopped(stop) => break Ok(()),
        }
    };
    if outcome.is_ok() {
        // No new deliveries; running handlers may still ack theirs on this channel.
        let _ = channel
            .basic_cancel(consumer.tag(), BasicCancelOptions::default())
            .await;
        let drain = async { while in_flight.join_next().await.is_some() {} };
        if tokio::time::timeout(DRAIN_TIMEOUT, drain).await.is_err() {
            warn!("handlers still running at shutdown; their messages will be redelivered");
        }
        let _ = channel.close(200, "consumer stopped".into()).await;
    }
    // Handlers that are still running keep going (aborting one halfway through its effects
    // is worse); their acks fail on the dead channel and the broker redelivers.
    in_flight.detach_all();
    outcome
}

async fn handle_delivery(
    shared: Arc<Shared>,
    link: Arc<Link>,
    subscription: Arc<Subscription>,
    handler: Arc<dyn EventHandler>,
    delivery: AmqpDelivery,
) {
    let topology = &shared.topology;
    let queue = topology.queue(&subscription.queue);
    let (envelope, attempt) = match codec::decode(&delivery.properties, &delivery.data) {
        Ok(decoded) => decoded,
        Err(reason) => {
            // A message nobody can read would fail the same way forever.
            warn!(%reason, "undecodable message; dead-lettering it");
            let properties = codec::republish_properties(&delivery.properties, 1, Some(&reason));
            republish_then_ack(
                &link,
                &topology.dead_letter_exchange(),
                &queue,
                properties,
                &delivery,
            )
            .await;
            return;
        }
    };
    // A root: the consumer loop lives as long as the bus, and one trace per message is what
    // a trace viewer can show; the handler joins the publisher's trace from the envelope's
    // `traceparent` header.
    let span = info_span!(
        parent: None,
        "messaging.handle",
        otel.kind = "consumer",
        queue = %subscription.queue,
        message_id = %envelope.message_id,
        kind = %envelope.kind,
        attempt,
    );
    async {
        let result = call_handler(handler, Delivery { envelope, attempt }).await;
        match settle(result, attempt, &subscription) {
            Settle::Ack => ack(&delivery).await,
            Settle::Retry { next_attempt } => {
                debug!(next_attempt, "handler failed; retrying later");
                let properties =
                    codec::republish_properties(&delivery.properties, next_attempt, None);
                // Through the default exchange straight into this subscription's retry
                // queue, which expires it back into the subscription queue.
                let retry_queue =
                    topology.retry_queue(&subscription.queue, subscription.retry_delay);
                republish_then_ack(&link, "", &retry_queue, properties, &delivery).await;
            }
            Settle::DeadLetter { reason } => {
                warn!(%reason, "handler gave up; dead-lettering");
                let properties =
                    codec::republish_properties(&delivery.properties, attempt, Some(&reason));
                republish_then_ack(
                    &link,
                    &topology.dead_letter_exchange(),
                    &queue,
                    properties,
                    &delivery,
                )
                .await;
            }
        }
    }
    .instrument(span)
    .await;
}

/// Acks only once the copy is confirmed, so the message exists somewhere at every moment
/// (at worst twice, which consumers dedupe).
async fn republish_then_ack(
    link: &Link,
    exchange: &str,
    routing_key: &str,
    properties: BasicProperties,
    delivery: &AmqpDelivery,
) {
    match link
        .publish_confirmed(exchange, routing_key, &delivery.data, properties)
        .await
    {
        Ok(()) => ack(delivery).await,
        Err(error) => {
            warn!(%error, "could not republish; handing the message back");
            tokio::time::sleep(REQUEUE_PAUSE).await;
            let requeue = BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            };
            if let Err(error) = delivery.nack(requeue).await {
                debug!(%error, "nack failed; the broker redelivers when the channel closes");
            }
        }
    }
}

async fn ack(delivery: &AmqpDelivery) {
    if let Err(error) = delivery.ack(BasicAckOptions::default()).await {
        // The channel is gone, so the broker requeues the message and it comes back;
        // idempotent consumers absorb the repeat.
        debug!(%error, "ack failed; the message will be redelivered");
    }
}
