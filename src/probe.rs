//! What the broker says it supports: one `ApiVersions` v3 request, answered by every Kafka
//! protocol broker before anything else (librdkafka sends the same request on each connection,
//! but does not expose the answer).
//!
//! The answer lists the API keys with their version ranges and, in tagged fields, the broker's
//! *finalized features* (KIP-584): an Apache Kafka 3.3+ KRaft cluster finalizes
//! `metadata.version`, 4.x adds `group.version` (KIP-848 consumer groups when ≥ 1) and
//! `transaction.version`. Tansu 0.6 finalizes none (its `ApiVersionsService` answers an empty
//! list), which is how rebound tells it apart (`BrokerFeatures::lacks_kraft_features`).
//!
//! Wire format (Kafka protocol guide, `ApiVersionsRequest.json` / `ApiVersionsResponse.json`):
//! request header v2 (flexible), body `client_software_name`, `client_software_version`
//! (compact strings); the response uses header **v0** whatever the version (so that a client can
//! read an error from a broker too old for the version it asked), then `error_code`,
//! `api_keys` (compact array of key, min, max, tags), `throttle_time_ms`, and tagged fields
//! 0 `SupportedFeatures`, 1 `FinalizedFeaturesEpoch`, 2 `FinalizedFeatures`, 3 `ZkMigrationReady`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// `ApiVersions`' API key.
const API_VERSIONS: i16 = 18;
/// `ConsumerGroupHeartbeat`: the KIP-848 consumer group protocol.
pub const CONSUMER_GROUP_HEARTBEAT: i16 = 68;
/// `EndTxn`: committing or aborting a transaction.
pub const END_TXN: i16 = 26;

/// What a broker answered to `ApiVersions`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BrokerFeatures {
    /// API key → (min version, max version) the broker accepts.
    pub api_keys: BTreeMap<i16, (i16, i16)>,
    /// Finalized feature name → its finalized (max) version level.
    pub finalized: BTreeMap<String, i16>,
}

impl BrokerFeatures {
    /// Whether the broker accepts `api_key` at all.
    pub fn supports(&self, api_key: i16) -> bool {
        self.api_keys.contains_key(&api_key)
    }

    /// The broker finalizes no `metadata.version`: not an Apache Kafka KRaft cluster (Tansu 0.6
    /// answers with no finalized features). rebound then works around Tansu's gaps (one record
    /// per produced batch in the demo, see docs/broker-compat.md).
    pub fn lacks_kraft_features(&self) -> bool {
        !self.finalized.contains_key("metadata.version")
    }

    /// Why Kafka transactions cannot be used on this broker, or `None` when they can: `EndTxn`
    /// must be served, and the broker must be an Apache Kafka KRaft cluster (Tansu 0.6 serves
    /// the API key list without finalized features, and has no working transactions).
    pub fn transactions_missing(&self) -> Option<&'static str> {
        if !self.supports(END_TXN) {
            Some("EndTxn is not served")
        } else if self.lacks_kraft_features() {
            Some("no finalized metadata.version: not Apache Kafka KRaft (Tansu 0.6 lacks transactions)")
        } else {
            None
        }
    }

    /// The KIP-848 consumer group protocol is available: `ConsumerGroupHeartbeat` is served and
    /// `group.version` is finalized at 1 or more.
    pub fn consumer_group_protocol(&self) -> bool {
        self.supports(CONSUMER_GROUP_HEARTBEAT)
            && self.finalized.get("group.version").is_some_and(|v| *v >= 1)
    }
}

/// Why the probe got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("no broker of {0:?} could be reached")]
    Unreachable(String),
    #[error("talking to {addr}: {source}")]
    Io {
        addr: String,
        source: std::io::Error,
    },
    #[error("the ApiVersions answer could not be read: {0}")]
    Malformed(&'static str),
    #[error("the broker answered ApiVersions with error code {0}")]
    Broker(i16),
}

/// Asks the first reachable broker of `bootstrap` (a `host:port,...` list) for its API versions
/// and finalized features. Blocking, bounded by `timeout` per broker tried: call it from
/// `spawn_blocking` in async code. Plaintext only: with a `security.protocol` other than
/// `plaintext` the caller should not probe (the TLS/SASL handshake is librdkafka's business).
pub fn api_versions(bootstrap: &str, timeout: Duration) -> Result<BrokerFeatures, ProbeError> {
    let mut last = None;
    for addr in bootstrap
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
    {
        match probe_one(addr, timeout) {
            Ok(f) => return Ok(f),
            Err(e @ ProbeError::Io { .. }) => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| ProbeError::Unreachable(bootstrap.to_string())))
}

fn probe_one(addr: &str, timeout: Duration) -> Result<BrokerFeatures, ProbeError> {
    let io = |source| ProbeError::Io {
        addr: addr.to_string(),
        source,
    };
    let target = addr
        .to_socket_addrs()
        .map_err(io)?
        .next()
        .ok_or_else(|| ProbeError::Unreachable(addr.to_string()))?;
    let mut stream = TcpStream::connect_timeout(&target, timeout).map_err(io)?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    stream.write_all(&request(1)).map_err(io)?;
    let mut size = [0u8; 4];
    stream.read_exact(&mut size).map_err(io)?;
    let size = i32::from_be_bytes(size);
    if !(0..=1 << 20).contains(&size) {
        return Err(ProbeError::Malformed("frame size out of range"));
    }
    let mut body = vec![0u8; size as usize];
    stream.read_exact(&mut body).map_err(io)?;
    decode_response(&body, 1)
}

/// The framed `ApiVersions` v3 request with `correlation_id`.
pub fn request(correlation_id: i32) -> Vec<u8> {
    let mut b = Vec::with_capacity(40);
    b.extend_from_slice(&API_VERSIONS.to_be_bytes());
    b.extend_from_slice(&3i16.to_be_bytes());
    b.extend_from_slice(&correlation_id.to_be_bytes());
    let client = b"rebound-probe";
    b.extend_from_slice(&(client.len() as i16).to_be_bytes());
    b.extend_from_slice(client);
    b.push(0); // header tagged fields
    for s in [&b"rebound"[..], env!("CARGO_PKG_VERSION").as_bytes()] {
        b.push(s.len() as u8 + 1); // compact string: length + 1 (both are short)
        b.extend_from_slice(s);
    }
    b.push(0); // body tagged fields
    let mut framed = (b.len() as i32).to_be_bytes().to_vec();
    framed.extend_from_slice(&b);
    framed
}

/// A cursor over a response body (pure).
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ProbeError> {
        if self.buf.len() < n {
            return Err(ProbeError::Malformed("truncated"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn i16(&mut self) -> Result<i16, ProbeError> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self) -> Result<i32, ProbeError> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// An unsigned varint (protobuf style, at most 5 bytes for a u32).
    fn uvarint(&mut self) -> Result<u32, ProbeError> {
        let mut value: u32 = 0;
        for i in 0..5 {
            let byte = self.take(1)?[0];
            value |= u32::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(ProbeError::Malformed("varint too long"))
    }

    /// A compact array's element count (length + 1; 0 is null).
    fn compact_len(&mut self) -> Result<usize, ProbeError> {
        Ok((self.uvarint()? as usize).saturating_sub(1))
    }

    fn compact_string(&mut self) -> Result<String, ProbeError> {
        let n = self.compact_len()?;
        Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
    }

    fn skip_tags(&mut self) -> Result<(), ProbeError> {
        for _ in 0..self.uvarint()? {
            self.uvarint()?;
            let n = self.uvarint()? as usize;
            self.take(n)?;
        }
        Ok(())
    }
}

/// Decodes an `ApiVersions` v3 response body (after the size prefix) that should carry
/// `correlation_id`.
pub fn decode_response(body: &[u8], correlation_id: i32) -> Result<BrokerFeatures, ProbeError> {
    let mut r = Reader { buf: body };
    if r.i32()? != correlation_id {
        return Err(ProbeError::Malformed("another correlation id"));
    }
    let error = r.i16()?;
    if error != 0 {
        return Err(ProbeError::Broker(error));
    }
    let mut features = BrokerFeatures::default();
    for _ in 0..r.compact_len()? {
        let key = r.i16()?;
        let min = r.i16()?;
        let max = r.i16()?;
        r.skip_tags()?;
        features.api_keys.insert(key, (min, max));
    }
    r.i32()?; // throttle_time_ms
    for _ in 0..r.uvarint()? {
        let tag = r.uvarint()?;
        let size = r.uvarint()? as usize;
        let field = r.take(size)?;
        if tag == 2 {
            let mut f = Reader { buf: field };
            for _ in 0..f.compact_len()? {
                let name = f.compact_string()?;
                let max_level = f.i16()?;
                f.i16()?; // min_version_level
                f.skip_tags()?;
                features.finalized.insert(name, max_level);
            }
        }
    }
    Ok(features)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uvarint(mut v: u32, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    /// A response body as Apache Kafka writes it.
    fn response(keys: &[(i16, i16, i16)], finalized: &[(&str, i16)]) -> Vec<u8> {
        let mut b = 7i32.to_be_bytes().to_vec();
        b.extend_from_slice(&0i16.to_be_bytes());
        uvarint(keys.len() as u32 + 1, &mut b);
        for (k, min, max) in keys {
            for v in [k, min, max] {
                b.extend_from_slice(&v.to_be_bytes());
            }
            b.push(0);
        }
        b.extend_from_slice(&0i32.to_be_bytes());
        let mut field = Vec::new();
        uvarint(finalized.len() as u32 + 1, &mut field);
        for (name, level) in finalized {
            uvarint(name.len() as u32 + 1, &mut field);
            field.extend_from_slice(name.as_bytes());
            field.extend_from_slice(&level.to_be_bytes());
            field.extend_from_slice(&1i16.to_be_bytes());
            field.push(0);
        }
        let epoch = 5i64.to_be_bytes();
        uvarint(2, &mut b); // two tagged fields: epoch (1) and finalized features (2)
        uvarint(1, &mut b);
        uvarint(epoch.len() as u32, &mut b);
        b.extend_from_slice(&epoch);
        uvarint(2, &mut b);
        uvarint(field.len() as u32, &mut b);
        b.extend_from_slice(&field);
        b
    }

    #[test]
    fn kafka_answer_lists_keys_and_finalized_features() {
        let body = response(
            &[
                (0, 0, 12),
                (CONSUMER_GROUP_HEARTBEAT, 0, 1),
                (END_TXN, 0, 5),
            ],
            &[("metadata.version", 27), ("group.version", 1)],
        );
        let f = decode_response(&body, 7).unwrap();
        assert_eq!(f.api_keys.get(&0), Some(&(0, 12)));
        assert!(f.supports(END_TXN));
        assert!(f.consumer_group_protocol());
        assert!(!f.lacks_kraft_features());
    }

    #[test]
    fn an_answer_without_finalized_features_is_not_a_kraft_cluster() {
        let body = response(&[(0, 0, 11), (CONSUMER_GROUP_HEARTBEAT, 0, 0)], &[]);
        let f = decode_response(&body, 7).unwrap();
        assert!(f.lacks_kraft_features());
        assert!(!f.consumer_group_protocol(), "no group.version finalized");
    }

    #[test]
    fn truncated_or_foreign_answers_are_errors_not_panics() {
        let body = response(&[(0, 0, 11)], &[("metadata.version", 27)]);
        for cut in 0..body.len() {
            assert!(decode_response(&body[..cut], 7).is_err(), "cut at {cut}");
        }
        assert!(matches!(
            decode_response(&body, 8),
            Err(ProbeError::Malformed(_))
        ));
    }

    #[test]
    fn the_request_is_framed_with_its_length() {
        let r = request(1);
        let size = i32::from_be_bytes([r[0], r[1], r[2], r[3]]) as usize;
        assert_eq!(size, r.len() - 4);
        assert_eq!(&r[4..6], &API_VERSIONS.to_be_bytes());
    }
}
