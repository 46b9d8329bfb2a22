//! DNS queries whose answers must be known to be DNSSEC-validated, for DANE.
//!
//! With `delivery.dnssec = "trust-resolver"`, each query is sent to the resolvers in
//! `delivery.dns_servers` with the DO and AD bits set (RFC 6840), and an answer
//! counts as secure when the resolver sets the AD bit in its response. hickory's resolver
//! sets neither bit in queries unless it validates itself, and it hides the response
//! header behind its cache, so these few queries are sent directly over UDP, with TCP when
//! the answer is truncated.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::proto::op::{Edns, Message, MessageType, Query, ResponseCode};
use hickory_resolver::proto::rr::{Name, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// The result of one query to a validating resolver.
#[derive(Clone, Debug)]
pub(crate) enum SecureLookup {
    /// NOERROR: the answer records, and whether the resolver validated them.
    Found {
        /// The AD bit of the response.
        secure: bool,
        /// Answer records of the queried type (empty for NODATA).
        records: Vec<Record>,
    },
    /// NXDOMAIN: the name does not exist.
    NotFound,
    /// SERVFAIL, which a validating resolver returns for a bogus answer, or no usable
    /// response from any resolver.
    Failed(String),
}

/// Sends DNSSEC-aware queries to the configured resolvers.
#[derive(Clone, Debug)]
pub(crate) struct SecureResolver {
    servers: Vec<SocketAddr>,
    timeout: Duration,
}

impl SecureResolver {
    /// Creates a resolver that queries `servers` in order, allowing `timeout` per query.
    pub fn new(servers: Vec<SocketAddr>, timeout: Duration) -> SecureResolver {
        SecureResolver { servers, timeout }
    }

    /// Looks up `name` (fully qualified) of type `record_type`, trying each server until
    /// one answers.
    pub async fn lookup(&self, name: &Name, record_type: RecordType) -> SecureLookup {
        let mut last_error = "no DNS server configured".to_owned();
        for server in &self.servers {
            match tokio::time::timeout(self.timeout, query(*server, name, record_type)).await {
                Ok(Ok(response)) => return classify(response, record_type),
                Ok(Err(error)) => last_error = format!("{server}: {error}"),
                Err(_) => last_error = format!("{server}: timed out after {:?}", self.timeout),
            }
        }
        SecureLookup::Failed(last_error)
    }
}

fn classify(response: Message, record_type: RecordType) -> SecureLookup {
    match response.metadata.response_code {
        ResponseCode::NoError => SecureLookup::Found {
            secure: response.metadata.authentic_data,
            records: response
                .answers
                .into_iter()
                .filter(|record| record.record_type() == record_type)
                .collect(),
        },
        ResponseCode::NXDomain => SecureLookup::NotFound,
        other => SecureLookup::Failed(format!("response code {other}")),
    }
}

async fn query(
    server: SocketAddr,
    name: &Name,
    record_type: RecordType,
) -> std::io::Result<Message> {
    let mut request = Message::query();
    request.metadata.recursion_desired = true;
    request.metadata.authentic_data = true;
    request.add_query(Query::query(name.clone(), record_type));
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    edns.set_dnssec_ok(true);
    request.set_edns(edns);
    let id = request.metadata.id;
    let bytes = request.to_vec().map_err(std::io::Error::other)?;

    let bind = if server.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let socket = UdpSocket::bind(bind).await?;
    socket.connect(server).await?;
    socket.send(&bytes).await?;
    let mut buffer = vec![0u8; 65_535];
    let response = loop {
        let length = socket.recv(&mut buffer).await?;
        // A datagram with another id or that does not parse is ignored, as a spoofed
        // or stray answer would be.
        if let Ok(message) = Message::from_vec(&buffer[..length])
            && message.metadata.id == id
            && message.metadata.message_type == MessageType::Response
        {
            break message;
        }
    };
    if !response.metadata.truncation {
        return Ok(response);
    }

    let mut stream = TcpStream::connect(server).await?;
    let length = u16::try_from(bytes.len()).map_err(std::io::Error::other)?;
    let mut framed = length.to_be_bytes().to_vec();
    framed.extend_from_slice(&bytes);
    stream.write_all(&framed).await?;
    let length = stream.read_u16().await?;
    let mut reply = vec![0u8; usize::from(length)];
    stream.read_exact(&mut reply).await?;
    let response = Message::from_vec(&reply).map_err(std::io::Error::other)?;
    if response.metadata.id != id {
        return Err(std::io::Error::other(
            "response id does not match the query",
        ));
    }
    Ok(response)
}
