//! The Prometheus health gate: during a bake the policy's PromQL query is evaluated against
//! `<url>/api/v1/query` every `interval`, and each sample compared with the threshold.
//! Parsing and comparing are pure; only [`query`] talks to the network.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kpersist_crds::{PrometheusGate, SecretKeyRef, parse_duration};
use reqwest::header::{HeaderName, HeaderValue};
use serde::Deserialize;

use crate::engine::GateVerdict;
use crate::repository::fetch::{USER_AGENT, error_chain, trust_ca_bundle};
use crate::secrets;

/// The query timeout when `timeout` cannot be parsed (the API default).
const FALLBACK_TIMEOUT: Duration = Duration::from_secs(10);

/// Consecutive query errors after which the gate is reported inconclusive (the wave holds,
/// phase Paused) rather than still pending; one error alone is taken as a blip.
pub const ERRORS_BEFORE_INCONCLUSIVE: u32 = 3;

/// The JSON answer of `/api/v1/query`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueryResponse {
    /// `success` or `error`.
    pub status: String,
    /// The result, on success.
    #[serde(default)]
    pub data: Option<QueryData>,
    /// The error text, on error.
    #[serde(default)]
    pub error: Option<String>,
}

/// The `data` of a query answer.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", tag = "resultType", content = "result")]
pub enum QueryData {
    /// One sample per series.
    #[serde(rename = "vector")]
    Vector(Vec<VectorSample>),
    /// One value.
    #[serde(rename = "scalar")]
    Scalar((f64, String)),
    /// Series of samples (a range selector in the query); the last value of each counts.
    #[serde(rename = "matrix")]
    Matrix(Vec<MatrixSeries>),
    /// A string result cannot be compared.
    #[serde(rename = "string")]
    String((f64, String)),
}

/// A vector sample.
#[derive(Debug, Deserialize)]
pub struct VectorSample {
    /// Series labels.
    #[serde(default)]
    pub metric: HashMap<String, String>,
    /// `[timestamp, "value"]`.
    pub value: (f64, String),
}

/// A matrix series.
#[derive(Debug, Deserialize)]
pub struct MatrixSeries {
    /// Series labels.
    #[serde(default)]
    pub metric: HashMap<String, String>,
    /// `[[timestamp, "value"], ...]`.
    pub values: Vec<(f64, String)>,
}

/// Judges a query answer against the gate. No client required.
pub fn verdict(gate: &PrometheusGate, response: &QueryResponse) -> Result<GateVerdict, String> {
    if response.status != "success" {
        return Err(format!(
            "Prometheus refused the query: {}",
            response.error.as_deref().unwrap_or("no error text")
        ));
    }
    let samples: Vec<(String, String)> = match &response.data {
        None => return Err("Prometheus answered success without data".to_string()),
        Some(QueryData::String(_)) => {
            return Err("the query returns a string; write one that returns numbers".to_string());
        }
        Some(QueryData::Scalar((_, value))) => vec![("scalar".to_string(), value.clone())],
        Some(QueryData::Vector(samples)) => samples
            .iter()
            .map(|s| (series_name(&s.metric), s.value.1.clone()))
            .collect(),
        Some(QueryData::Matrix(series)) => series
            .iter()
            .filter_map(|s| Some((series_name(&s.metric), s.values.last()?.1.clone())))
            .collect(),
    };
    if samples.is_empty() {
        return Ok(if gate.fail_on_empty {
            GateVerdict::Fail(format!(
                "query {:?} returned no samples (failOnEmpty)",
                gate.query
            ))
        } else {
            GateVerdict::Inconclusive(format!(
                "query {:?} returned no samples, so nothing says the wave is healthy; if \
                 no series means healthy, end the query with `or vector(0)`",
                gate.query
            ))
        });
    }
    for (series, text) in samples {
        // Prometheus writes NaN and ±Inf as text; NaN compares false and so fails.
        let value: f64 = text
            .parse()
            .map_err(|_| format!("sample {series} has value {text:?}, not a number"))?;
        if !gate.operator.holds(value, gate.threshold) {
            return Ok(GateVerdict::Fail(format!(
                "{series} = {value} does not satisfy {:?} {} (query {:?})",
                gate.operator, gate.threshold, gate.query
            )));
        }
    }
    Ok(GateVerdict::Pass)
}

fn series_name(metric: &HashMap<String, String>) -> String {
    let mut labels: Vec<_> = metric.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    labels.sort();
    format!("{{{}}}", labels.join(","))
}

/// Evaluates the gate once: its headers (Secret values read), its client (CA bundle), its
/// query. Client and network required.
pub async fn evaluate(kube: &kube::Client, gate: &PrometheusGate) -> Result<GateVerdict, String> {
    let headers = headers(kube, gate).await?;
    let client = client_for(gate)?;
    query(&client, gate, &headers).await
}

/// The HTTP client for the gate's Prometheus: its CA bundle trusted besides the system's,
/// plain http refused for an https URL, no redirects followed.
pub fn client_for(gate: &PrometheusGate) -> Result<reqwest::Client, String> {
    let builder = reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .redirect(reqwest::redirect::Policy::none())
        .https_only(gate.url.starts_with("https://"));
    let builder = trust_ca_bundle(builder, gate.ca_bundle.as_deref()).map_err(|e| {
        format!(
            "health.prometheus.caBundle is not a PEM certificate bundle ({e}); paste the CA \
             certificates in PEM form"
        )
    })?;
    builder
        .build()
        .map_err(|e| format!("cannot build the HTTP client for {}: {e}", gate.url))
}

/// A header the gate sends.
pub type Header = (HeaderName, HeaderValue);

/// The gate's headers, each with its value, a Secret's read with `kube` and marked
/// sensitive. An error names the header and where its value comes from, never the value.
async fn headers(kube: &kube::Client, gate: &PrometheusGate) -> Result<Vec<Header>, String> {
    let mut out = Vec::new();
    for (i, header) in gate.headers.iter().enumerate() {
        let field = format!("health.prometheus.headers[{i}] ({})", header.name);
        let (value, secret) = match (&header.value, &header.value_from) {
            (Some(value), None) => (value.clone(), false),
            (None, Some(from)) => {
                let field = format!("{field}.valueFrom");
                let secret =
                    secrets::read(kube, &from.namespace, &from.name, &field, GATE_SECRETS).await?;
                (secret_value(&secret, from, &field)?, true)
            }
            _ => return Err(format!("{field} needs exactly one of value and valueFrom")),
        };
        out.push(header_of(&header.name, &value, secret).map_err(|e| format!("{field}: {e}"))?);
    }
    Ok(out)
}

/// `name: value` as an HTTP header; a secret one is kept out of debug output.
pub fn header_of(name: &str, value: &str, secret: bool) -> Result<Header, String> {
    let name = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| "not an HTTP header name".to_string())?;
    let mut value = HeaderValue::from_str(value).map_err(|_| {
        "the value holds a character an HTTP header cannot carry (a line break, a control or \
         non-ASCII character)"
            .to_string()
    })?;
    value.set_sensitive(secret);
    Ok((name, value))
}

/// The chart value listing the Secrets gate headers may come from.
const GATE_SECRETS: &str = "operator.gateSecrets";

/// The text of `from.key` in `secret`, without surrounding white space (a token written
/// from a file often ends in a newline). No client required.
pub fn secret_value(secret: &Secret, from: &SecretKeyRef, field: &str) -> Result<String, String> {
    let (namespace, name, key) = (&from.namespace, &from.name, &from.key);
    let bytes = secret
        .data
        .as_ref()
        .and_then(|data| data.get(key))
        .ok_or_else(|| format!("Secret {namespace}/{name} ({field}) has no key {key:?}"))?;
    let text = std::str::from_utf8(&bytes.0)
        .map_err(|_| format!("Secret {namespace}/{name} key {key} ({field}) is not UTF-8 text"))?;
    Ok(text.trim().to_string())
}

/// Runs the gate's query once with `headers`, within the gate's `timeout`. Network
/// required.
#[tracing::instrument(skip_all, fields(url = %gate.url))]
pub async fn query(
    client: &reqwest::Client,
    gate: &PrometheusGate,
    headers: &[Header],
) -> Result<GateVerdict, String> {
    let base = format!("{}/api/v1/query", gate.url.trim_end_matches('/'));
    let url = reqwest::Url::parse_with_params(&base, &[("query", gate.query.as_str())])
        .map_err(|e| format!("health.prometheus.url {:?} is not a URL: {e}", gate.url))?;
    let timeout = parse_duration(&gate.timeout).unwrap_or(FALLBACK_TIMEOUT);
    let mut request = client.get(url.clone()).timeout(timeout);
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let failed = |e: reqwest::Error| {
        if e.is_timeout() {
            format!("GET {url} did not answer within {timeout:?} (health.prometheus.timeout)")
        } else {
            format!("GET {url} failed: {}", error_chain(&e))
        }
    };
    let response = request.send().await.map_err(failed)?;
    let status = response.status();
    let body = response.bytes().await.map_err(failed)?;
    // Prometheus answers 400/422 with a JSON error body worth showing.
    let parsed: QueryResponse = serde_json::from_slice(&body)
        .map_err(|e| format!("{url} answered HTTP {status} with no Prometheus JSON: {e}"))?;
    verdict(gate, &parsed)
}

/// The gate's memory for one policy's current bake.
#[derive(Debug, Clone, Default)]
pub struct GateState {
    /// The bake this state belongs to (`status.rollout.bakeStartedAt`).
    pub bake: Option<String>,
    /// When the query last ran.
    pub evaluated_at: Option<jiff::Timestamp>,
    /// The last verdict.
    pub verdict: Option<GateVerdict>,
    /// Query errors in a row.
    pub errors: u32,
}

impl GateState {
    /// Whether the query should run now for this bake.
    pub fn due(&self, now: jiff::Timestamp, interval: Duration) -> bool {
        match self.evaluated_at {
            None => true,
            Some(at) => {
                Duration::try_from(now.duration_since(at)).unwrap_or(Duration::ZERO) >= interval
            }
        }
    }

    /// Records a query's result. A failing verdict stays for the rest of the bake: the
    /// wave failed, whatever later samples say. A query error takes back an earlier pass
    /// (the wave is not judged healthy on old news) but leaves an inconclusive gate so
    /// (the wave does not flap between held and baking); repeated, it makes the gate
    /// inconclusive.
    pub fn record(&mut self, result: Result<GateVerdict, String>, now: jiff::Timestamp) {
        self.evaluated_at = Some(now);
        if matches!(self.verdict, Some(GateVerdict::Fail(_))) {
            return;
        }
        match result {
            Ok(verdict) => {
                self.errors = 0;
                self.verdict = Some(verdict);
            }
            Err(message) => {
                self.errors += 1;
                tracing::warn!(%message, errors = self.errors, "Prometheus gate query failed");
                if self.errors >= ERRORS_BEFORE_INCONCLUSIVE {
                    self.verdict = Some(GateVerdict::Inconclusive(format!(
                        "{ERRORS_BEFORE_INCONCLUSIVE} or more queries in a row failed, the \
                         last: {message}"
                    )));
                } else if self.verdict == Some(GateVerdict::Pass) {
                    self.verdict = None;
                }
            }
        }
    }
}

/// Every policy's gate state, keyed by policy name.
#[derive(Debug, Default, Clone)]
pub struct GateStates {
    states: Arc<Mutex<HashMap<String, GateState>>>,
}

impl GateStates {
    /// The policy's state for `bake`, fresh when the bake changed.
    pub fn take(&self, policy: &str, bake: Option<&str>) -> GateState {
        let kept = self.lock().remove(policy);
        match kept {
            Some(state) if state.bake.as_deref() == bake => state,
            _ => GateState {
                bake: bake.map(str::to_string),
                ..GateState::default()
            },
        }
    }

    /// Stores the policy's state.
    pub fn put(&self, policy: &str, state: GateState) {
        self.lock().insert(policy.to_string(), state);
    }

    /// Forgets a deleted policy.
    pub fn forget(&self, policy: &str) {
        self.lock().remove(policy);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, GateState>> {
        self.states.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
#[path = "gate_tests.rs"]
mod tests;
