//! What one Kafka sink is told, and its validation.
//!
//! [`KafkaTarget`] is what the operator typed, read off a stream_to
//! (`kafka: {storage_address, sasl_*, security_protocol}`) and a route
//! (`kafka: {topic_name, partition}`), COMPAT.md §2.3. [`KafkaTarget::validate`]
//! checks it all at once, with no I/O, and returns the [`KafkaSinkConfig`]
//! that [`super::KafkaSink`] is built from. Connecting is the sink's business.

use std::fmt;
use std::time::Duration;

use serde_json::Value;

use crate::role::data::routes::model::{ReportMode, Route, StreamTo};
use crate::role::data::routes::validate;

/// How long rskafka keeps retrying one step (connect, metadata, produce)
/// after a refused connection or a retryable broker error. Its retries nest
/// (a produce retry reconnects with its own retries), so the bound that
/// matters is [`DEFAULT_REQUEST_TIMEOUT`]; this keeps each step short.
pub const DEFAULT_RETRY_DEADLINE: Duration = Duration::from_secs(1);
/// Upper bound for one whole `write_batch` step (connect, or one produce
/// request with acks=all): past it the batch fails and the agent sends it
/// again. Below the agent's default ack timeout (15 s), so the agent gets a
/// clear refusal rather than a stall.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest produce request the sink builds (sum of record sizes plus a
/// per-record allowance). Kafka's default `message.max.bytes` is 1 MiB + 12.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 1_000_000;
/// Bytes added to each record's key + value + headers size when cutting
/// requests (record framing, varints, timestamp deltas).
pub const RECORD_OVERHEAD_BYTES: usize = 64;
/// Most partitions a route may spread records over.
pub const MAX_PARTITIONS: i64 = 10_000;
/// Longest legal Kafka topic name.
const MAX_TOPIC_LEN: usize = 249;

/// The SASL mechanisms the sink can speak (rskafka's set, minus OAUTHBEARER
/// which a GSE stream_to has no fields for).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaslMechanism {
    Plain,
    ScramSha256,
    ScramSha512,
}

/// How produce requests are compressed (`stream_to.kafka.compression`, our
/// extension; bk-monitor sends none: no compression).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KafkaCompression {
    #[default]
    None,
    Gzip,
    Lz4,
    Zstd,
}

/// TLS to the brokers (`security_protocol` SSL or SASL_SSL): the brokers'
/// certificates are checked against `ssl_cafile` (a PEM bundle on the node;
/// our extension, librdkafka's `ssl.ca.location`), else the system's
/// bundle, and must name the host of the address dialed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaTls {
    pub ca_file: std::path::PathBuf,
}

/// The system's CA bundle (Debian's `ca-certificates`), used when a
/// stream_to names no `ssl_cafile`.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// SASL credentials of a stream_to. `Debug` hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct KafkaSasl {
    pub mechanism: SaslMechanism,
    pub username: String,
    pub password: String,
}

/// A Kafka route target as the operator gave it (stream_to + route fields).
#[derive(Clone, Debug, Default)]
pub struct KafkaTarget {
    /// The stream_to's name; the sink's name in logs, metrics and errors.
    pub stream_to_name: String,
    /// `stream_to.kafka.storage_address`: bootstrap brokers.
    pub storage_address: Vec<(String, u16)>,
    pub sasl_username: Option<String>,
    pub sasl_passwd: Option<String>,
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512` (case does not matter).
    pub sasl_mechanisms: Option<String>,
    /// `PLAINTEXT`, `SASL_PLAINTEXT`, `SSL` or `SASL_SSL`.
    pub security_protocol: Option<String>,
    /// `ssl_cafile`: the CA bundle brokers' certificates are checked
    /// against (TLS only).
    pub ssl_cafile: Option<String>,
    /// `compression`: `none`, `gzip`, `lz4` or `zstd`.
    pub compression: Option<String>,
    /// `route.stream_to.kafka.topic_name`.
    pub topic_name: String,
    /// `route.stream_to.kafka.partition`: how many partitions the topic has
    /// (bk-monitor's `KafkaTopicInfo.partition`). Absent, 0 or 1 = partition 0.
    pub partition: Option<i64>,
}

/// A validated Kafka sink configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaSinkConfig {
    /// The stream_to's name.
    pub name: String,
    /// Bootstrap brokers as `host:port` (`[v6]:port`).
    pub brokers: Vec<String>,
    pub topic: String,
    /// Partitions the records are spread over (by agent), at least 1.
    pub partitions: i32,
    pub sasl: Option<KafkaSasl>,
    pub tls: Option<KafkaTls>,
    pub compression: KafkaCompression,
    pub retry_deadline: Duration,
    pub request_timeout: Duration,
    pub max_request_bytes: usize,
}

/// A Kafka target that cannot become a sink; lists every problem found.
#[derive(Debug, thiserror::Error)]
#[error("kafka sink for stream_to '{sink}' is misconfigured: {}; fix the stream_to or route and apply it again", problems.join("; "))]
pub struct KafkaConfigError {
    pub sink: String,
    pub problems: Vec<String>,
}

// === impl KafkaTarget ===

impl KafkaTarget {
    /// Reads a stored stream_to (`kafka: {storage_address, sasl_*,
    /// security_protocol}`) and one of its routes (`kafka: {topic_name,
    /// partition}`; with no `topic_name`, `data_set` + `biz_id` as older
    /// clients send). Only shape problems fail here; [`Self::validate`]
    /// judges the values.
    pub fn from_route(stream_to: &StreamTo, route: &Route) -> Result<KafkaTarget, String> {
        let section = stream_to
            .section()
            .and_then(Value::as_object)
            .ok_or("report_mode kafka needs a kafka object with storage_address")?;
        let storage_address =
            validate::section_addresses(section, "kafka").map_err(|e| e.to_string())?;
        let text = |key: &str| section.get(key).and_then(Value::as_str).map(str::to_owned);
        let route_kafka = route.section(ReportMode::Kafka);
        let route_text = |key: &str| {
            route_kafka
                .and_then(|s| s.get(key))
                .and_then(|v| match v {
                    Value::String(s) => Some(s.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    _ => None,
                })
                .filter(|s| !s.is_empty())
        };
        let topic_name = route_text("topic_name")
            .or_else(|| Some(route_text("data_set")? + &route_text("biz_id").unwrap_or_default()))
            .ok_or_else(|| format!("route {:?} has no kafka.topic_name", route.name))?;
        let partition = match route_text("partition") {
            None => None,
            Some(p) => Some(p.parse::<i64>().map_err(|_| {
                format!(
                    "route {:?}: kafka.partition {p:?} is not a whole number",
                    route.name
                )
            })?),
        };
        Ok(KafkaTarget {
            stream_to_name: stream_to.name.clone(),
            storage_address,
            sasl_username: text("sasl_username"),
            sasl_passwd: text("sasl_passwd"),
            sasl_mechanisms: text("sasl_mechanisms"),
            security_protocol: text("security_protocol"),
            ssl_cafile: text("ssl_cafile"),
            compression: text("compression"),
            topic_name,
            partition,
        })
    }

    /// Checks every field and returns the sink configuration, or every
    /// problem at once.
    pub fn validate(self) -> Result<KafkaSinkConfig, KafkaConfigError> {
        let mut problems = Vec::new();
        let brokers = brokers(&self.storage_address, &mut problems);
        check_topic(&self.topic_name, &mut problems);
        let partitions = partitions(self.partition, &mut problems);
        let sasl = self.sasl(&mut problems);
        let tls = self.tls(&mut problems);
        let compression = self.compression(&mut problems);
        if !problems.is_empty() {
            return Err(KafkaConfigError {
                sink: self.stream_to_name,
                problems,
            });
        }
        Ok(KafkaSinkConfig {
            name: self.stream_to_name,
            brokers,
            topic: self.topic_name,
            partitions,
            sasl,
            tls,
            compression,
            retry_deadline: DEFAULT_RETRY_DEADLINE,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
        })
    }

    /// SASL from `security_protocol`, `sasl_mechanisms` and the credentials.
    /// Credentials with no protocol mean SASL_PLAINTEXT, and with no
    /// mechanism PLAIN (the common BlueKing setup).
    fn sasl(&self, problems: &mut Vec<String>) -> Option<KafkaSasl> {
        let user = non_empty(&self.sasl_username);
        let pass = non_empty(&self.sasl_passwd);
        let protocol = non_empty(&self.security_protocol).map(str::to_ascii_uppercase);
        let wants_sasl = match protocol.as_deref() {
            None => user.is_some() || pass.is_some(),
            Some(p @ ("PLAINTEXT" | "SSL")) => {
                if user.is_some() || pass.is_some() {
                    problems.push(format!("security_protocol {p} contradicts sasl_username/sasl_passwd: use SASL_{p} or drop the credentials"));
                }
                false
            }
            Some("SASL_PLAINTEXT" | "SASL_SSL") => true,
            Some(p) => {
                problems.push(format!(
                    "security_protocol '{p}' is unknown; use PLAINTEXT, SASL_PLAINTEXT, SSL or SASL_SSL"
                ));
                return None;
            }
        };
        if !wants_sasl {
            return None;
        }
        let mechanism = match non_empty(&self.sasl_mechanisms).map(str::to_ascii_uppercase) {
            None => Some(SaslMechanism::Plain),
            Some(m) => match m.as_str() {
                "PLAIN" => Some(SaslMechanism::Plain),
                "SCRAM-SHA-256" => Some(SaslMechanism::ScramSha256),
                "SCRAM-SHA-512" => Some(SaslMechanism::ScramSha512),
                _ => {
                    problems.push(format!("sasl_mechanisms '{m}' is not supported; use PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"));
                    None
                }
            },
        };
        let (Some(user), Some(pass)) = (user, pass) else {
            problems.push("SASL needs both sasl_username and sasl_passwd".into());
            return None;
        };
        Some(KafkaSasl {
            mechanism: mechanism?,
            username: user.to_owned(),
            password: pass.to_owned(),
        })
    }
}

impl KafkaTarget {
    /// TLS when `security_protocol` is SSL or SASL_SSL.
    fn tls(&self, problems: &mut Vec<String>) -> Option<KafkaTls> {
        let protocol = non_empty(&self.security_protocol).map(str::to_ascii_uppercase);
        let ca = non_empty(&self.ssl_cafile);
        match protocol.as_deref() {
            Some("SSL" | "SASL_SSL") => {
                let ca_file = std::path::PathBuf::from(ca.unwrap_or(SYSTEM_CA_BUNDLE));
                if !ca_file.is_absolute() {
                    problems.push(format!(
                        "ssl_cafile '{}' is not an absolute path on the node",
                        ca_file.display()
                    ));
                    return None;
                }
                Some(KafkaTls { ca_file })
            }
            _ => {
                if ca.is_some() {
                    problems.push("ssl_cafile is given but security_protocol is not SSL or SASL_SSL: say which".into());
                }
                None
            }
        }
    }

    fn compression(&self, problems: &mut Vec<String>) -> KafkaCompression {
        match non_empty(&self.compression)
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("none") => KafkaCompression::None,
            Some("gzip") => KafkaCompression::Gzip,
            Some("lz4") => KafkaCompression::Lz4,
            Some("zstd") => KafkaCompression::Zstd,
            Some(other) => {
                problems.push(format!(
                    "compression '{other}' is not supported; use none, gzip, lz4 or zstd"
                ));
                KafkaCompression::None
            }
        }
    }
}

fn non_empty(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

fn brokers(addrs: &[(String, u16)], problems: &mut Vec<String>) -> Vec<String> {
    if addrs.is_empty() {
        problems.push("storage_address is empty: give at least one {ip, port} of a broker".into());
    }
    let mut out = Vec::with_capacity(addrs.len());
    for (ip, port) in addrs {
        let host = ip.trim();
        if host.is_empty() || host.contains(char::is_whitespace) || host.contains('/') {
            problems.push(format!(
                "storage_address ip '{ip}' is not a host name or address"
            ));
        } else if *port == 0 {
            problems.push(format!("storage_address {host} has port 0"));
        } else if host.contains(':') {
            out.push(format!("[{}]:{port}", host.trim_matches(['[', ']'])));
        } else {
            out.push(format!("{host}:{port}"));
        }
    }
    out
}

/// Kafka's own rule: 1..=249 of `[a-zA-Z0-9._-]`, not `.` or `..`.
fn check_topic(topic: &str, problems: &mut Vec<String>) {
    let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if topic.is_empty() {
        problems.push("topic_name is empty".into());
    } else if topic.len() > MAX_TOPIC_LEN
        || !topic.chars().all(legal)
        || topic == "."
        || topic == ".."
    {
        problems.push(format!("topic_name '{topic}' is not a legal Kafka topic (1-249 of letters, digits, '.', '_', '-')"));
    }
}

fn partitions(partition: Option<i64>, problems: &mut Vec<String>) -> i32 {
    match partition {
        None | Some(0) => 1,
        Some(n @ 1..=MAX_PARTITIONS) => n as i32,
        Some(n) => {
            problems.push(format!(
                "partition {n} is out of range (1..={MAX_PARTITIONS} partitions)"
            ));
            1
        }
    }
}

// === impl KafkaSasl ===

impl fmt::Debug for KafkaSasl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaSasl")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .field("password", &"<hidden>")
            .finish()
    }
}

impl KafkaSasl {
    /// The rskafka form of these credentials.
    pub(super) fn to_rskafka(&self) -> rskafka::client::SaslConfig {
        use rskafka::client::{Credentials, SaslConfig};
        let creds = Credentials::new(self.username.clone(), self.password.clone());
        match self.mechanism {
            SaslMechanism::Plain => SaslConfig::Plain(creds),
            SaslMechanism::ScramSha256 => SaslConfig::ScramSha256(creds),
            SaslMechanism::ScramSha512 => SaslConfig::ScramSha512(creds),
        }
    }
}
