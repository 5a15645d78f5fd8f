//! Azure's Instance Metadata Service (IMDS): the VCEK of this chip with its chain (THIM) for
//! SNP CVMs, and the TD quote for the TDREPORT of a TDX CVM.
//!
//! IMDS is plain HTTP on a link-local address served by the host, which is outside the trust
//! boundary: nothing it returns is trusted here. The VCEK and the TD quote are only transport
//! for material the broker checks against the hardware vendors' roots. Like the broker
//! client: no proxy (a proxy could not reach a link-local address anyway), no redirects,
//! bounded timeouts, replies capped.

use std::time::Duration;

use crate::config::Timeouts;

/// Largest IMDS reply read (a VCEK chain or a TD quote is a few KiB).
const MAX_REPLY: u64 = 1 << 20;

/// Attempts per request. IMDS can briefly refuse connections or answer 5xx early in boot;
/// anything else (a 4xx, a malformed reply) is final.
const ATTEMPTS: u32 = 3;

/// The first wait between attempts; it doubles.
const FIRST_RETRY_WAIT: Duration = Duration::from_millis(100);

/// An IMDS request failed.
#[derive(Debug, thiserror::Error)]
pub enum ImdsError {
    /// No HTTP answer (connection refused, timeout, reset).
    #[error("IMDS {url}: {message}")]
    Transport {
        /// The URL requested.
        url: String,
        /// Why.
        message: String,
    },
    /// An answer other than 200.
    #[error("IMDS {url}: HTTP {status}: {body}")]
    Status {
        /// The URL requested.
        url: String,
        /// The status.
        status: u16,
        /// The start of the body, for the operator.
        body: String,
    },
    /// The reply is larger than we read.
    #[error("IMDS {url}: reply larger than {MAX_REPLY} bytes")]
    TooLarge {
        /// The URL requested.
        url: String,
    },
}

/// A client for one IMDS base URL.
pub(crate) struct Imds {
    agent: ureq::Agent,
    base: String,
}

impl Imds {
    /// A client for `base_url` (`http://169.254.169.254` on Azure).
    pub(crate) fn new(base_url: &str, timeouts: &Timeouts) -> Imds {
        let agent = crate::net::agent(ureq::tls::TlsConfig::default(), false, timeouts);
        Imds {
            agent,
            base: base_url.trim_end_matches('/').to_owned(),
        }
    }

    /// `GET base + path` with the `Metadata: true` header IMDS requires.
    pub(crate) fn get(&self, path: &str) -> Result<Vec<u8>, ImdsError> {
        let url = format!("{}{path}", self.base);
        self.with_retries(&url, || {
            self.agent.get(&url).header("Metadata", "true").call()
        })
    }

    /// `POST base + path` with a JSON body.
    pub(crate) fn post_json(&self, path: &str, body: &str) -> Result<Vec<u8>, ImdsError> {
        let url = format!("{}{path}", self.base);
        self.with_retries(&url, || {
            self.agent
                .post(&url)
                .header("Metadata", "true")
                .header("Content-Type", "application/json")
                .send(body)
        })
    }

    fn with_retries(
        &self,
        url: &str,
        mut call: impl FnMut() -> Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Vec<u8>, ImdsError> {
        let mut wait = FIRST_RETRY_WAIT;
        let mut attempt = 1;
        loop {
            let result = match call() {
                Ok(resp) => read(url, resp),
                Err(e) => Err(ImdsError::Transport {
                    url: url.to_owned(),
                    message: e.to_string(),
                }),
            };
            let retryable = matches!(
                &result,
                Err(ImdsError::Transport { .. })
                    | Err(ImdsError::Status {
                        status: 500..=599,
                        ..
                    })
            );
            if !retryable || attempt >= ATTEMPTS {
                return result;
            }
            if let Err(e) = &result {
                log::info!("{e}; retrying in {} ms", wait.as_millis());
            }
            std::thread::sleep(wait);
            wait *= 2;
            attempt += 1;
        }
    }
}

fn read(url: &str, mut resp: ureq::http::Response<ureq::Body>) -> Result<Vec<u8>, ImdsError> {
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .with_config()
        .limit(MAX_REPLY)
        .read_to_vec()
        .map_err(|e| match e {
            ureq::Error::BodyExceedsLimit(_) => ImdsError::TooLarge {
                url: url.to_owned(),
            },
            e => ImdsError::Transport {
                url: url.to_owned(),
                message: e.to_string(),
            },
        })?;
    if status != 200 {
        let text: String = String::from_utf8_lossy(&body)
            .chars()
            .take(200)
            .filter(|c| !c.is_control())
            .collect();
        return Err(ImdsError::Status {
            url: url.to_owned(),
            status,
            body: text,
        });
    }
    Ok(body)
}
