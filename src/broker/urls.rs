//! Where RabbitMQ is, and what kind of queues a namespace uses there.
//!
//! `--amqp` takes one URL or the nodes of a cluster, comma-separated on the command line and in
//! the environment, a string or a list in the configuration file. They are tried in order on
//! connect and on every reconnect, so a role moves to the next node when one goes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Most nodes `--amqp` may name.
pub const MAX_BROKER_URLS: usize = 16;

/// The RabbitMQ nodes to try, in order: at least one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrls(Vec<String>);

impl BrokerUrls {
    /// The URLs, in the order they are tried.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }

    /// The URLs without their passwords, comma-separated: for messages and logs.
    pub fn shown(&self) -> String {
        self.0.iter().map(|u| super::redact(u)).collect::<Vec<_>>().join(",")
    }
}

impl FromStr for BrokerUrls {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        s.split(',').map(str::trim).map(str::to_string).collect::<Vec<_>>().try_into()
    }
}

impl TryFrom<Vec<String>> for BrokerUrls {
    type Error = String;

    fn try_from(urls: Vec<String>) -> Result<Self, String> {
        if urls.is_empty() || urls.iter().all(|u| u.trim().is_empty()) {
            return Err("no RabbitMQ URL given (amqp://[USER:PASSWORD@]HOST[:PORT][/VHOST])".into());
        }
        if urls.len() > MAX_BROKER_URLS {
            return Err(format!("{} RabbitMQ URLs is over the limit of {MAX_BROKER_URLS}", urls.len()));
        }
        for url in &urls {
            let scheme_ok = url.starts_with("amqp://") || url.starts_with("amqps://");
            if !scheme_ok || url.parse::<lapin::uri::AMQPUri>().is_err() {
                return Err(format!(
                    "'{}' is not a RabbitMQ URL (amqp://[USER:PASSWORD@]HOST[:PORT][/VHOST], or amqps://)",
                    super::redact(url)
                ));
            }
        }
        Ok(BrokerUrls(urls))
    }
}

/// As given: the URLs comma-separated (with their passwords: this is the setting itself).
impl fmt::Display for BrokerUrls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

impl Serialize for BrokerUrls {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for BrokerUrls {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Given;
        impl<'de> serde::de::Visitor<'de> for Given {
            type Value = BrokerUrls;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a RabbitMQ URL, or a list of them (a cluster's nodes)")
            }

            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<BrokerUrls, E> {
                s.parse().map_err(E::custom)
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<BrokerUrls, A::Error> {
                let mut urls = Vec::new();
                while let Some(url) = seq.next_element::<String>()? {
                    // Counted as they come: a hostile list is refused before it is all read.
                    if urls.len() == MAX_BROKER_URLS {
                        return Err(serde::de::Error::custom(format!(
                            "more than {MAX_BROKER_URLS} RabbitMQ URLs is over the limit"
                        )));
                    }
                    urls.push(url);
                }
                urls.try_into().map_err(serde::de::Error::custom)
            }
        }
        d.deserialize_any(Given)
    }
}

/// The kind of RabbitMQ queue a namespace's work queues are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    /// One node holds each queue: the fastest, lost with its node.
    #[default]
    Classic,
    /// Replicated over the cluster's nodes by Raft: survives the loss of a minority of them.
    Quorum,
}

impl QueueType {
    /// Its name, as RabbitMQ's `x-queue-type` says it.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_of_nodes_is_read_in_order_from_text_or_a_toml_list() {
        let urls: BrokerUrls = "amqp://a:5672, amqp://u:secret@b:5673/%2f,amqps://c".parse().unwrap();
        assert_eq!(urls.iter().collect::<Vec<_>>(), ["amqp://a:5672", "amqp://u:secret@b:5673/%2f", "amqps://c"]);
        assert_eq!(urls.shown(), "amqp://a:5672,amqp://u:***@b:5673/%2f,amqps://c");
        assert_eq!(urls.to_string().parse::<BrokerUrls>().unwrap(), urls, "its text reads back");
        #[derive(Deserialize)]
        struct File {
            amqp: BrokerUrls,
        }
        let one: File = toml::from_str("amqp = \"amqp://a:5672\"").unwrap();
        assert_eq!(one.amqp.iter().count(), 1);
        let many: File = toml::from_str("amqp = [\"amqp://a:5672\", \"amqp://b:5672\"]").unwrap();
        assert_eq!(many.amqp.iter().collect::<Vec<_>>(), ["amqp://a:5672", "amqp://b:5672"]);
        // A file's mistakes say what was wanted.
        let err = toml::from_str::<File>("amqp = [\"amqp://a\", 5]").err().unwrap().to_string();
        assert!(err.contains("expected a string"), "{err}");
        let err = toml::from_str::<File>("amqp = 5").err().unwrap().to_string();
        assert!(err.contains("expected a RabbitMQ URL, or a list of them"), "{err}");
        let err = toml::from_str::<File>("amqp = [\"http://x\"]").err().unwrap().to_string();
        assert!(err.contains("'http://x' is not a RabbitMQ URL"), "{err}");
    }

    #[test]
    fn a_bad_url_is_named_without_its_password() {
        for (given, message) in [
            ("", "no RabbitMQ URL given (amqp://[USER:PASSWORD@]HOST[:PORT][/VHOST])"),
            (
                "amqp://a,http://u:pw@b",
                "'http://u:***@b' is not a RabbitMQ URL (amqp://[USER:PASSWORD@]HOST[:PORT][/VHOST], or amqps://)",
            ),
            (
                "amqp://a:notaport",
                "'amqp://a:notaport' is not a RabbitMQ URL (amqp://[USER:PASSWORD@]HOST[:PORT][/VHOST], or amqps://)",
            ),
        ] {
            assert_eq!(given.parse::<BrokerUrls>().unwrap_err(), message, "{given:?}");
        }
        let many = vec!["amqp://a"; MAX_BROKER_URLS + 1].join(",");
        assert_eq!(many.parse::<BrokerUrls>().unwrap_err(), "17 RabbitMQ URLs is over the limit of 16");
    }
}
