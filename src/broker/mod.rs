//! RabbitMQ, through lapin: the only module that imports it.
//!
//! Topology, for a namespace `NS` (`vpd` unless `--namespace` says otherwise; tests use one
//! each):
//!
//! | name | kind | what flows |
//! | --- | --- | --- |
//! | `NS.tasks` | durable queue, dead-letters to `NS.dlx` | frame tasks, consumed by workers with manual acks |
//! | `NS.dlx` → `NS.tasks.dead` | direct exchange → durable queue, bounded | tasks that failed for good (poison frames), kept for inspection |
//! | `NS.events` | fanout exchange | [`JobEvent`]s as JSON; every listener binds its own exclusive queue |
//! | `NS.reply.JOB` | exclusive, auto-delete queue, one per job | results, named in each task's `reply_to` |
//!
//! Messages are transient: the server holds every outstanding frame and re-dispatches what a
//! broker restart loses, so writing frames to the broker's disk would only cost time. Tasks are
//! published with confirms: a frame counts as dispatched once the broker has it.

mod urls;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use futures_lite::StreamExt;

use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, BasicRejectOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{
    Acker, BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind, PublisherConfirm,
};

use crate::protocol::event::JobEvent;
use crate::protocol::task::Correlation;

pub use urls::{BrokerUrls, MAX_BROKER_URLS, QueueType};

/// Header carrying how many times a task has been re-published (re-dispatch or retry).
pub const ATTEMPT_HEADER: &str = "x-vpd-attempt";
/// Default namespace of every queue and exchange name.
pub const DEFAULT_NAMESPACE: &str = "vpd";
/// Events held for one listener (thumbnails are the big ones, tens of kilobytes).
const EVENTS_MAX_MESSAGES: i32 = 2000;
/// A job's reply queue without a consumer for this long is dropped by the broker.
const REPLY_QUEUE_EXPIRES_MS: i32 = 60_000;
/// Most poison tasks kept in `NS.tasks.dead`; older ones are dropped.
const DEAD_MAX_MESSAGES: i32 = 1000;
/// Most bytes kept in `NS.tasks.dead` (each holds one or two frames).
const DEAD_MAX_BYTES: i64 = 256 << 20;
/// How long a segment's stream keeps its bytes should its server never delete it.
const BLOB_MAX_AGE: &str = "1h";
/// A segment stream's files on the broker's disk: small, so that an expired one is dropped soon.
const BLOB_SEGMENT_BYTES: i32 = 16 << 20;
/// How long connecting may take before it is an error.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The header that carries a message's MAC.
const MAC_HEADER: &str = "x-vpd-mac";

/// The cluster's shared key (`--cluster-key-file`): every task, result and event is signed
/// with HMAC-SHA256 over its kind, its correlation id and its body, and a consumer drops what
/// does not verify. Whoever can publish to the broker but lacks the key can then neither
/// inject frames into a job, nor make workers run work, nor cancel a job.
#[derive(Clone)]
pub struct ClusterKey {
    key: Arc<ring::hmac::Key>,
    id: [u8; 8],
}

/// The shortest key accepted, in bytes.
pub const MIN_KEY_BYTES: usize = 32;

impl ClusterKey {
    /// A key from its secret (the file's bytes, trailing whitespace ignored).
    pub fn new(secret: &[u8]) -> anyhow::Result<Self> {
        let secret = secret.trim_ascii_end();
        if secret.len() < MIN_KEY_BYTES {
            anyhow::bail!(
                "the cluster key has {} bytes; it needs {MIN_KEY_BYTES} or more (head -c 32 /dev/urandom | base64)",
                secret.len()
            );
        }
        let digest = ring::digest::digest(&ring::digest::SHA256, secret);
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest.as_ref()[..8]);
        Ok(ClusterKey { key: Arc::new(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret)), id })
    }

    /// Reads it from `path` (keep it mode 0600).
    pub fn load(path: &std::path::Path) -> anyhow::Result<Self> {
        let secret = crate::files::read_secret(path, "cluster key")?;
        ClusterKey::new(&secret).with_context(|| format!("{}", path.display()))
    }

    fn sign(&self, kind: u8, correlation: &str, body: &[u8]) -> ring::hmac::Tag {
        let mut ctx = ring::hmac::Context::with_key(&self.key);
        ctx.update(&[kind]);
        ctx.update(&(correlation.len() as u32).to_be_bytes());
        ctx.update(correlation.as_bytes());
        ctx.update(body);
        ctx.sign()
    }

    /// The MAC a task body gets, as [`Publisher::task`] sends it (for the benchmarks).
    pub fn task_mac(&self, correlation: &str, body: &[u8]) -> Vec<u8> {
        self.sign(MessageKind::Task as u8, correlation, body).as_ref().to_vec()
    }

    /// Whether `mac` is this key's over the message (compared in constant time).
    fn verify(&self, kind: u8, correlation: &str, body: &[u8], mac: &[u8]) -> bool {
        use subtle::ConstantTimeEq as _;
        self.sign(kind, correlation, body).as_ref().ct_eq(mac).into()
    }
}

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusterKey(id {:02x?})", self.id)
    }
}

impl PartialEq for ClusterKey {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl Eq for ClusterKey {}

/// What a message is, in its AMQP `type` property: part of what its MAC covers, so that one
/// kind cannot pass for another. A message without the property is the first kind its queue
/// carries (a frame task on the task queue, a frame result on a reply queue), as vpd sent
/// them before segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// A frame to filter.
    Task = 1,
    /// A filtered frame.
    Result = 2,
    /// A job event.
    Event = 3,
    /// A segment to decode, filter and encode.
    SegmentTask = 4,
    /// An encoded segment.
    SegmentResult = 5,
    /// How far a worker is into a segment.
    SegmentProgress = 6,
    /// A segment task too large for one message: where its parts are.
    SegmentRef = 7,
}

/// The kinds a task queue carries.
const TASK_KINDS: &[MessageKind] = &[MessageKind::Task, MessageKind::SegmentTask, MessageKind::SegmentRef];
/// The kinds a reply queue carries.
const REPLY_KINDS: &[MessageKind] =
    &[MessageKind::Result, MessageKind::SegmentResult, MessageKind::SegmentProgress, MessageKind::SegmentRef];

impl MessageKind {
    /// Its name in the `type` property.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::Task => "task",
            MessageKind::Result => "result",
            MessageKind::Event => "event",
            MessageKind::SegmentTask => "segment-task",
            MessageKind::SegmentResult => "segment-result",
            MessageKind::SegmentProgress => "segment-progress",
            MessageKind::SegmentRef => "segment-ref",
        }
    }

    fn of(name: &str) -> Option<MessageKind> {
        [
            Self::Task,
            Self::Result,
            Self::Event,
            Self::SegmentTask,
            Self::SegmentResult,
            Self::SegmentProgress,
            Self::SegmentRef,
        ]
        .into_iter()
        .find(|k| k.as_str() == name)
    }
}

/// A role's `--queue-type` is not what the namespace's queues are on the broker: a setting to
/// fix, not a fault that reconnecting cures.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct QueueTypeMismatch(String);

/// The names of one namespace's queues and exchanges, and the cluster's key, if it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    ns: String,
    key: Option<ClusterKey>,
    queue_type: QueueType,
}

impl Topology {
    /// The topology of namespace `ns`, with classic queues.
    pub fn new(ns: impl Into<String>) -> Self {
        Topology { ns: ns.into(), key: None, queue_type: QueueType::Classic }
    }

    /// Its work queues (`NS.tasks`, `NS.tasks.dead`) of type `queue_type`.
    pub fn with_queue_type(mut self, queue_type: QueueType) -> Self {
        self.queue_type = queue_type;
        self
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.ns
    }

    /// Messages signed and checked with `key`.
    pub fn with_key(mut self, key: Option<ClusterKey>) -> Self {
        self.key = key;
        self
    }

    /// The headers that sign a message of `kind`, when there is a key.
    fn signed(&self, kind: MessageKind, correlation: &str, body: &[u8], mut headers: FieldTable) -> FieldTable {
        if let Some(key) = &self.key {
            let tag = key.sign(kind as u8, correlation, body);
            headers.insert(MAC_HEADER.into(), AMQPValue::ByteArray(tag.as_ref().to_vec().into()));
        }
        headers
    }

    /// The arguments every work queue is declared with: its type, where it is not the default
    /// (so that queues declared before the setting existed stay equivalent).
    fn work_queue_args(&self) -> FieldTable {
        let mut args = FieldTable::default();
        if self.queue_type != QueueType::Classic {
            args.insert("x-queue-type".into(), AMQPValue::LongString(long(self.queue_type.as_str())));
        }
        args
    }

    /// A failed declaration of a work queue, in one line where it is a type that differs from
    /// the queue's on the broker (RabbitMQ's PRECONDITION_FAILED).
    fn declare_error(&self, e: lapin::Error) -> anyhow::Error {
        let text = e.to_string();
        if text.contains("x-queue-type") {
            // "… received 'quorum' but current is 'classic'", or "… current is the value 'quorum' …".
            // "… but current is 'classic'", "… current is the value 'quorum' …", or "… current is
            // none" (a queue declared without the argument: classic).
            let after = text.split("current is").nth(1).unwrap_or_default();
            let current = if after.trim_start().starts_with("none") {
                "classic"
            } else {
                after.split('\'').nth(1).unwrap_or("another type")
            };
            return anyhow::Error::new(QueueTypeMismatch(format!(
                "the queues of namespace '{}' are {current} queues on this broker, not {}: pass --queue-type {current}, \
                 or another --namespace for {} queues",
                self.ns,
                self.queue_type.as_str(),
                self.queue_type.as_str()
            )));
        }
        anyhow::Error::new(e).context("declaring the work queues")
    }

    /// The work queue.
    pub fn tasks(&self) -> String {
        format!("{}.tasks", self.ns)
    }

    /// The dead-letter exchange.
    pub fn dlx(&self) -> String {
        format!("{}.dlx", self.ns)
    }

    /// The queue of poison tasks.
    pub fn dead(&self) -> String {
        format!("{}.tasks.dead", self.ns)
    }

    /// The events exchange.
    pub fn events(&self) -> String {
        format!("{}.events", self.ns)
    }

    /// The reply queue of one job.
    pub fn reply(&self, job: &str) -> String {
        format!("{}.reply.{job}", self.ns)
    }

    /// The stream that holds segment `number` of `job` when its task is too large for one
    /// message.
    pub fn blob(&self, job: &str, number: u64) -> String {
        format!("{}.blob.{job}.{number}", self.ns)
    }

    /// A stream of its own for one result of segment `number` of `job` too large for one
    /// message, `unique` to the worker and the try.
    pub fn result_blob(&self, job: &str, number: u64, unique: &str) -> String {
        format!("{}.result.{unique}", self.blob(job, number))
    }
}

/// A connection to RabbitMQ.
#[derive(Clone)]
pub struct Broker {
    conn: Arc<Connection>,
    url: String,
}

/// `amqp://user:secret@host` → `amqp://user:***@host`, for messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// The first pause after a failed attempt to reach RabbitMQ; it doubles up to [`RETRY_MAX`].
pub const RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(200);
/// The longest pause between attempts to reach RabbitMQ.
pub const RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs `attempt` (connecting, and whatever goes with it) until it succeeds: at once, then
/// after pauses of [`RETRY_FIRST`] doubling to [`RETRY_MAX`]. Gives up with the last error once
/// `patience` (when given) has run out, or when `stop` fires. The one reconnect loop of every
/// role that keeps a broker connection: the server's jobs, workers, previews.
pub async fn retry<T, F, Fut>(
    patience: Option<std::time::Duration>,
    stop: &tokio_util::sync::CancellationToken,
    mut attempt: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let deadline = patience.map(|p| tokio::time::Instant::now() + p);
    let mut pause = RETRY_FIRST;
    loop {
        let error = match attempt().await {
            Ok(value) => return Ok(value),
            Err(e) => e,
        };
        let now = tokio::time::Instant::now();
        if let Some(deadline) = deadline
            && now + pause > deadline
        {
            let waited = patience.unwrap_or_default().as_secs();
            return Err(error.context(format!("RabbitMQ unreachable for {waited} s")));
        }
        tracing::warn!(error = %format!("{error:#}"), pause_ms = pause.as_millis() as u64, "RabbitMQ unreachable; retrying");
        tokio::select! {
            _ = stop.cancelled() => return Err(error.context("stopped while reconnecting to RabbitMQ")),
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(RETRY_MAX);
    }
}

impl Broker {
    /// Connects to the first of `urls` that answers, trying them in order, naming the
    /// connection `name` in RabbitMQ's management views. The error names every node tried.
    pub async fn connect(urls: &BrokerUrls, name: &str) -> anyhow::Result<Broker> {
        let mut failures = Vec::new();
        for url in urls.iter() {
            match Broker::connect_one(url, name).await {
                Ok(broker) => {
                    if !failures.is_empty() {
                        tracing::warn!(broker = broker.url(), passed_over = %failures.join("; "), "connected to a later RabbitMQ node");
                    }
                    return Ok(broker);
                }
                Err(e) if urls.iter().count() == 1 => return Err(e),
                Err(e) => failures.push(format!("{e:#}")),
            }
        }
        Err(anyhow!("no RabbitMQ node answered: {}", failures.join("; ")))
    }

    /// Connects to `url`, naming the connection `name` in RabbitMQ's management views.
    pub async fn connect_one(url: &str, name: &str) -> anyhow::Result<Broker> {
        let shown = redact(url);
        let props = ConnectionProperties::default().with_connection_name(name.into());
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(url, props))
            .await
            .map_err(|_| anyhow!("cannot reach RabbitMQ at {shown}: no answer in {} s", CONNECT_TIMEOUT.as_secs()))?
            .with_context(|| format!("cannot reach RabbitMQ at {shown}"))?;
        Ok(Broker { conn: Arc::new(conn), url: shown })
    }

    /// The broker's address, without the password.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether the connection is still up.
    pub fn is_connected(&self) -> bool {
        self.conn.status().connected()
    }

    async fn channel(&self) -> anyhow::Result<Channel> {
        self.conn.create_channel().await.context("opening a RabbitMQ channel")
    }

    /// Puts `body` on a stream of its own named `name`, in confirmed messages of at most `part`
    /// bytes, replacing what a stream of that name held (a resumed job's, say).
    pub async fn put_blob(&self, name: &str, body: &[u8], part: usize) -> anyhow::Result<usize> {
        let ch = self.channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        ch.queue_delete(name.into(), QueueDeleteOptions::default()).await?;
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), AMQPValue::LongString(long("stream")));
        // A server that dies before deleting it leaves an empty stream, not its bytes.
        args.insert("x-max-age".into(), AMQPValue::LongString(long(BLOB_MAX_AGE)));
        args.insert("x-stream-max-segment-size-bytes".into(), AMQPValue::LongInt(BLOB_SEGMENT_BYTES));
        let durable = QueueDeclareOptions { durable: true, ..Default::default() };
        ch.queue_declare(name.into(), durable, args).await?;
        let mut confirms = Vec::new();
        let parts = body.chunks(part.max(1));
        let count = parts.len();
        for chunk in parts {
            let props = BasicProperties::default();
            confirms
                .push(ch.basic_publish("".into(), name.into(), BasicPublishOptions::default(), chunk, props).await?);
        }
        for confirm in confirms {
            anyhow::ensure!(matches!(confirm.await?, Confirmation::Ack(_)), "RabbitMQ refused a part of {name}");
        }
        ch.close(200, "put".into()).await.ok();
        Ok(count)
    }

    /// Reads the first `parts` messages of stream `name`, at most `limit` bytes in all, within
    /// `patience`.
    pub async fn get_blob(
        &self,
        name: &str,
        parts: usize,
        limit: usize,
        patience: Duration,
    ) -> anyhow::Result<Vec<u8>> {
        let ch = self.channel().await?;
        let read = async {
            ch.basic_qos(u16::try_from(parts.clamp(1, 64)).unwrap_or(64), BasicQosOptions::default()).await?;
            let mut args = FieldTable::default();
            args.insert("x-stream-offset".into(), AMQPValue::LongString(long("first")));
            let mut consumer =
                ch.basic_consume(name.into(), "blob".into(), BasicConsumeOptions::default(), args).await?;
            let mut body = Vec::new();
            for _ in 0..parts {
                let delivery = consumer.next().await.ok_or_else(|| anyhow!("{name} ended early"))??;
                anyhow::ensure!(body.len() + delivery.data.len() <= limit, "{name} is over {limit} bytes");
                body.extend_from_slice(&delivery.data);
                delivery.acker.ack(BasicAckOptions::default()).await?;
            }
            Ok::<_, anyhow::Error>(body)
        };
        let body = tokio::time::timeout(patience, read).await;
        ch.close(200, "read".into()).await.ok();
        body.map_err(|_| anyhow!("{name}: not read in {} s", patience.as_secs()))?
    }

    /// Deletes stream (or queue) `name`.
    pub async fn delete_queue(&self, name: &str) -> anyhow::Result<()> {
        let ch = self.channel().await?;
        ch.queue_delete(name.into(), QueueDeleteOptions::default()).await?;
        ch.close(200, "deleted".into()).await.ok();
        Ok(())
    }

    /// Declares the namespace's queues and exchanges (idempotent; every role does it).
    pub async fn declare(&self, t: &Topology) -> anyhow::Result<()> {
        let ch = self.channel().await?;
        let durable = QueueDeclareOptions { durable: true, ..Default::default() };
        let exchange = ExchangeDeclareOptions { durable: true, ..Default::default() };
        ch.exchange_declare(t.dlx().into(), ExchangeKind::Direct, exchange, FieldTable::default()).await?;
        let mut dead_args = t.work_queue_args();
        dead_args.insert("x-max-length".into(), AMQPValue::LongInt(DEAD_MAX_MESSAGES));
        dead_args.insert("x-max-length-bytes".into(), AMQPValue::LongLongInt(DEAD_MAX_BYTES));
        ch.queue_declare(t.dead().into(), durable, dead_args).await.map_err(|e| t.declare_error(e))?;
        ch.queue_bind(
            t.dead().into(),
            t.dlx().into(),
            t.dead().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        let mut task_args = t.work_queue_args();
        task_args.insert("x-dead-letter-exchange".into(), AMQPValue::LongString(long(&t.dlx())));
        task_args.insert("x-dead-letter-routing-key".into(), AMQPValue::LongString(long(&t.dead())));
        ch.queue_declare(t.tasks().into(), durable, task_args).await.map_err(|e| t.declare_error(e))?;
        ch.exchange_declare(t.events().into(), ExchangeKind::Fanout, exchange, FieldTable::default()).await?;
        ch.close(200, "declared".into()).await.ok();
        Ok(())
    }

    /// Deletes the namespace's queues and exchanges (tests clean up with this).
    pub async fn delete(&self, t: &Topology) -> anyhow::Result<()> {
        let ch = self.channel().await?;
        for q in [t.tasks(), t.dead()] {
            ch.queue_delete(q.into(), QueueDeleteOptions::default()).await?;
        }
        for e in [t.events(), t.dlx()] {
            ch.exchange_delete(e.into(), ExchangeDeleteOptions::default()).await?;
        }
        Ok(())
    }

    /// Messages waiting in a queue, and consumers subscribed to it.
    pub async fn queue_stats(&self, queue: &str) -> anyhow::Result<(u32, u32)> {
        let ch = self.channel().await?;
        let q = ch
            .queue_declare(
                queue.into(),
                QueueDeclareOptions { passive: true, ..Default::default() },
                FieldTable::default(),
            )
            .await?;
        ch.close(200, "done".into()).await.ok();
        Ok((q.message_count(), q.consumer_count()))
    }

    /// Whether `queue` exists, by a passive declare on a throwaway channel (a missing queue
    /// closes the channel it was asked on). Another connection's exclusive queue exists too:
    /// the broker answers RESOURCE_LOCKED for it.
    pub async fn queue_exists(&self, queue: &str) -> anyhow::Result<bool> {
        use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
        let ch = self.channel().await?;
        let passive = QueueDeclareOptions { passive: true, ..Default::default() };
        match ch.queue_declare(queue.into(), passive, FieldTable::default()).await {
            Ok(_) => {
                ch.close(200, "done".into()).await.ok();
                Ok(true)
            }
            Err(e) => match e.kind() {
                lapin::ErrorKind::ProtocolError(amqp) => match amqp.kind() {
                    AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND) => Ok(false),
                    AMQPErrorKind::Soft(AMQPSoftError::RESOURCELOCKED) => Ok(true),
                    _ => Err(anyhow!(e).context(format!("looking up the queue {queue}"))),
                },
                _ => Err(anyhow!(e).context(format!("looking up the queue {queue}"))),
            },
        }
    }

    /// A channel to publish on, with publisher confirms.
    pub async fn publisher(&self) -> anyhow::Result<Publisher> {
        let ch = self.channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await.context("enabling publisher confirms")?;
        Ok(Publisher { ch })
    }

    /// Consumes frame tasks with manual acks, at most `prefetch` unacknowledged at a time.
    pub async fn consume_tasks(&self, t: &Topology, prefetch: u16, tag: &str) -> anyhow::Result<Consumer> {
        let ch = self.channel().await?;
        ch.basic_qos(prefetch, BasicQosOptions::default()).await?;
        let inner = ch
            .basic_consume(t.tasks().into(), tag.into(), BasicConsumeOptions::default(), FieldTable::default())
            .await?;
        Ok(Consumer { inner, ch, tag: tag.to_string(), key: t.key.clone(), kinds: TASK_KINDS, acked: true })
    }

    /// Declares job `job`'s reply queue and consumes it (no acks: a result lost with the
    /// server's connection is re-dispatched after reconnecting).
    pub async fn consume_replies(&self, t: &Topology, job: &str) -> anyhow::Result<(String, Consumer)> {
        let ch = self.channel().await?;
        let queue = t.reply(job);
        // Not an exclusive queue but an exclusive consumer: no one else can read the results,
        // and a worker checking that the job is alive (a passive declare) gets an answer
        // rather than a channel closed with RESOURCE_LOCKED. It goes with its consumer, and
        // the broker drops it should it never get one.
        let options = QueueDeclareOptions { auto_delete: true, ..Default::default() };
        let mut args = FieldTable::default();
        args.insert("x-expires".into(), AMQPValue::LongInt(REPLY_QUEUE_EXPIRES_MS));
        ch.queue_declare(queue.clone().into(), options, args).await?;
        let tag = format!("reply-{job}");
        let inner = ch
            .basic_consume(
                queue.clone().into(),
                tag.clone().into(),
                BasicConsumeOptions { no_ack: true, exclusive: true, ..Default::default() },
                FieldTable::default(),
            )
            .await?;
        Ok((queue, Consumer { inner, ch, tag, key: t.key.clone(), kinds: REPLY_KINDS, acked: false }))
    }

    /// Consumes every event on the events exchange through a fresh exclusive queue.
    pub async fn consume_events(&self, t: &Topology, tag: &str) -> anyhow::Result<Consumer> {
        let ch = self.channel().await?;
        let options = QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() };
        // A listener that falls behind loses the oldest events, not the broker's memory.
        let mut args = FieldTable::default();
        args.insert("x-max-length".into(), AMQPValue::LongInt(EVENTS_MAX_MESSAGES));
        let q = ch.queue_declare("".into(), options, args).await?;
        ch.queue_bind(
            q.name().clone(),
            t.events().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        let inner = ch
            .basic_consume(
                q.name().clone(),
                tag.into(),
                BasicConsumeOptions { no_ack: true, ..Default::default() },
                FieldTable::default(),
            )
            .await?;
        Ok(Consumer { inner, ch, tag: tag.to_string(), key: t.key.clone(), kinds: &[MessageKind::Event], acked: false })
    }

    /// Closes the connection.
    pub async fn close(&self) {
        self.conn.close(200, "bye".into()).await.ok();
    }
}

fn long(s: &str) -> LongString {
    LongString::from(s.as_bytes().to_vec())
}

/// A channel in confirm mode.
pub struct Publisher {
    ch: Channel,
}

/// The broker's answer to one publish.
pub struct Confirm(PublisherConfirm);

impl Confirm {
    /// Waits for the broker: `true` when it took the message, `false` when it refused it.
    pub async fn accepted(self) -> anyhow::Result<bool> {
        Ok(matches!(self.0.await?, Confirmation::Ack(_)))
    }
}

impl Publisher {
    /// Publishes a task body of `kind` ([`MessageKind::Task`] or [`MessageKind::SegmentTask`])
    /// to the work queue.
    pub async fn task(
        &self,
        t: &Topology,
        kind: MessageKind,
        body: &[u8],
        reply_to: &str,
        correlation: &Correlation,
        attempt: u32,
    ) -> anyhow::Result<Confirm> {
        let mut headers = FieldTable::default();
        headers.insert(ATTEMPT_HEADER.into(), AMQPValue::LongUInt(attempt));
        let headers = t.signed(kind, &correlation.to_string(), body, headers);
        let props = BasicProperties::default()
            .with_type(kind.as_str().into())
            .with_reply_to(reply_to.into())
            .with_correlation_id(correlation.to_string().into())
            .with_headers(headers);
        let confirm =
            self.ch.basic_publish("".into(), t.tasks().into(), BasicPublishOptions::default(), body, props).await?;
        Ok(Confirm(confirm))
    }

    /// Publishes a body of `kind` (a frame's or a segment's result, or a segment's progress) to
    /// a job's reply queue.
    pub async fn result(
        &self,
        t: &Topology,
        kind: MessageKind,
        reply_to: &str,
        correlation: &Correlation,
        body: &[u8],
    ) -> anyhow::Result<Confirm> {
        let headers = t.signed(kind, &correlation.to_string(), body, FieldTable::default());
        let props = BasicProperties::default()
            .with_type(kind.as_str().into())
            .with_correlation_id(correlation.to_string().into())
            .with_headers(headers);
        let confirm =
            self.ch.basic_publish("".into(), reply_to.into(), BasicPublishOptions::default(), body, props).await?;
        Ok(Confirm(confirm))
    }

    /// Publishes an event; does not wait for the broker's confirm.
    pub async fn event(&self, t: &Topology, event: &JobEvent) -> anyhow::Result<()> {
        let body = serde_json::to_vec(event)?;
        let headers = t.signed(MessageKind::Event, "", &body, FieldTable::default());
        let props = BasicProperties::default().with_content_type("application/json".into()).with_headers(headers);
        self.ch.basic_publish(t.events().into(), "".into(), BasicPublishOptions::default(), &body, props).await?;
        Ok(())
    }
}

/// A message off a queue.
pub struct Message {
    /// The body.
    pub body: Vec<u8>,
    /// Whether the broker delivered it before (its consumer died without acking).
    pub redelivered: bool,
    /// [`ATTEMPT_HEADER`], 0 when absent.
    pub attempt: u32,
    /// The `reply_to` property.
    pub reply_to: Option<String>,
    /// The `correlation_id` property, when it names a frame (or segment) of a job.
    pub correlation: Option<Correlation>,
    /// What it is.
    pub kind: MessageKind,
    acker: Acker,
}

impl Message {
    /// Acknowledges the message: the broker forgets it.
    pub async fn ack(&self) -> anyhow::Result<()> {
        self.acker.ack(BasicAckOptions::default()).await?;
        Ok(())
    }

    /// Rejects the message: back onto its queue, or (`requeue: false`) to the dead-letter queue.
    pub async fn reject(&self, requeue: bool) -> anyhow::Result<()> {
        self.acker.reject(BasicRejectOptions { requeue }).await?;
        Ok(())
    }
}

/// A subscription to a queue.
pub struct Consumer {
    inner: lapin::Consumer,
    ch: Channel,
    tag: String,
    /// The key messages must be signed with.
    key: Option<ClusterKey>,
    /// The kinds the queue carries; the first is a message's that does not say.
    kinds: &'static [MessageKind],
    /// Whether deliveries are acknowledged (a forged one is then rejected, not requeued).
    acked: bool,
}

impl Consumer {
    /// The next message; `None` once the subscription is cancelled; an error when the
    /// connection broke.
    pub async fn next(&mut self) -> Option<anyhow::Result<Message>> {
        let (delivery, kind) = loop {
            let delivery = match self.inner.next().await? {
                Ok(d) => d,
                Err(e) => return Some(Err(anyhow!(e).context("RabbitMQ connection lost"))),
            };
            let correlation = delivery.properties.correlation_id().as_ref().map_or("", |c| c.as_str());
            let kind = match delivery.properties.kind().as_ref() {
                None => Some(self.kinds[0]),
                Some(name) => MessageKind::of(name.as_str()).filter(|k| self.kinds.contains(k)),
            };
            let verified = |key: &ClusterKey, kind: MessageKind| {
                let mac = match delivery.properties.headers().as_ref().and_then(|h| h.inner().get(MAC_HEADER).cloned())
                {
                    Some(AMQPValue::ByteArray(b)) => b.as_slice().to_vec(),
                    _ => Vec::new(),
                };
                key.verify(kind as u8, correlation, &delivery.data, &mac)
            };
            match (kind, &self.key) {
                (Some(kind), None) => break (delivery, kind),
                (Some(kind), Some(key)) if verified(key, kind) => break (delivery, kind),
                (Some(kind), Some(_)) => {
                    tracing::warn!(
                        ?kind,
                        correlation,
                        bytes = delivery.data.len(),
                        "dropped a message without a valid signature"
                    );
                }
                (None, _) => {
                    let kind = delivery.properties.kind().as_ref().map(|k| k.to_string());
                    tracing::warn!(?kind, correlation, "dropped a message of a kind this queue does not carry");
                }
            }
            if self.acked {
                // To the dead-letter queue, where an operator can see what was forged.
                delivery.acker.reject(BasicRejectOptions { requeue: false }).await.ok();
            }
        };
        let header = |name: &str| delivery.properties.headers().as_ref().and_then(|h| h.inner().get(name).cloned());
        let attempt = match header(ATTEMPT_HEADER) {
            Some(AMQPValue::LongUInt(n)) => n,
            _ => 0,
        };
        let text = |s: &Option<ShortString>| s.as_ref().map(|s| s.as_str().to_string());
        Some(Ok(Message {
            redelivered: delivery.redelivered,
            attempt,
            reply_to: text(delivery.properties.reply_to()),
            correlation: delivery.properties.correlation_id().as_ref().and_then(|c| c.as_str().parse().ok()),
            kind,
            body: delivery.data,
            acker: delivery.acker,
        }))
    }

    /// Closes the subscription's channel. An auto-delete queue it was the last consumer of
    /// goes with it: a job's reply queue is gone once its job has ended, which is how workers
    /// tell a real cancel from a forged one.
    pub async fn close(self) {
        self.ch.close(200, "done".into()).await.ok();
    }

    /// Stops the subscription: no more deliveries; ones already received can still be acked.
    pub async fn cancel(&self) -> anyhow::Result<()> {
        self.ch.basic_cancel(self.tag.clone().into(), BasicCancelOptions::default()).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mac_covers_the_kind_the_correlation_and_every_byte() {
        let key = ClusterKey::new(b"0123456789abcdef0123456789abcdef\n").unwrap();
        let tag = key.sign(MessageKind::Task as u8, "j1:3", b"frame bytes");
        assert!(key.verify(MessageKind::Task as u8, "j1:3", b"frame bytes", tag.as_ref()));
        assert!(!key.verify(MessageKind::Result as u8, "j1:3", b"frame bytes", tag.as_ref()), "another kind");
        assert!(!key.verify(MessageKind::Task as u8, "j1:4", b"frame bytes", tag.as_ref()), "another frame");
        assert!(!key.verify(MessageKind::Task as u8, "j1:3", b"frame bytez", tag.as_ref()), "another body");
        assert!(!key.verify(MessageKind::Task as u8, "j1:3", b"frame bytes", &tag.as_ref()[..31]), "a cut tag");
        assert!(!key.verify(MessageKind::Task as u8, "j1:3", b"frame bytes", &[]), "no tag");
        let other = ClusterKey::new(b"0123456789abcdef0123456789abcdeX").unwrap();
        assert!(!other.verify(MessageKind::Task as u8, "j1:3", b"frame bytes", tag.as_ref()), "another key");
        let short = ClusterKey::new(b"too short").unwrap_err().to_string();
        assert!(short.contains("9 bytes; it needs 32 or more"), "{short}");
        assert!(!format!("{key:?}").contains("0123"), "the key never prints");
    }

    #[test]
    fn names_live_in_their_namespace() {
        let t = Topology::new("ns1");
        assert_eq!(
            (t.tasks(), t.dead(), t.dlx(), t.events()),
            ("ns1.tasks".into(), "ns1.tasks.dead".into(), "ns1.dlx".into(), "ns1.events".into())
        );
        assert_eq!(t.reply("j9"), "ns1.reply.j9");
    }

    #[tokio::test(start_paused = true)]
    async fn retries_back_off_and_give_up_or_stop() {
        use std::cell::RefCell;
        use tokio::time::Instant;
        let stop = tokio_util::sync::CancellationToken::new();
        // Fails three times, then succeeds: at 0, 0.2, 0.6 and 1.4 s.
        let start = Instant::now();
        let tries = RefCell::new(Vec::new());
        let got = retry(None, &stop, || {
            tries.borrow_mut().push(start.elapsed().as_millis());
            let n = tries.borrow().len();
            async move { if n < 4 { Err(anyhow!("down")) } else { Ok(n) } }
        })
        .await
        .unwrap();
        assert_eq!(got, 4);
        assert_eq!(*tries.borrow(), [0, 200, 600, 1400]);
        // Out of patience: the last error, saying for how long.
        let err = retry::<(), _, _>(Some(std::time::Duration::from_secs(3)), &stop, || async { Err(anyhow!("down")) })
            .await
            .unwrap_err();
        assert!(format!("{err:#}").starts_with("RabbitMQ unreachable for 3 s: down"), "{err:#}");
        // Stopped: at once.
        stop.cancel();
        let err = retry::<(), _, _>(None, &stop, || async { Err(anyhow!("down")) }).await.unwrap_err();
        assert!(format!("{err:#}").contains("stopped while reconnecting"), "{err:#}");
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("amqp://guest:guest@127.0.0.1:5672/%2f"), "amqp://guest:***@127.0.0.1:5672/%2f");
        assert_eq!(redact("amqp://127.0.0.1"), "amqp://127.0.0.1");
        assert_eq!(redact("amqp://user@host"), "amqp://user@host");
    }
}
