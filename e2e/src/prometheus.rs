//! A real Prometheus for the monitoring suite: Debian's `prometheus`, scraping the jobs a
//! test names every second (file-based discovery) and evaluating the rule files it is
//! given, on a free loopback port. Dropping it kills it; [`Prometheus::stop`] and
//! [`Prometheus::start_again`] take it away and bring it back (its data stays).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::process::Process;
use crate::sim_fleet::free_port;
use crate::wait::{Check, wait_until};
use crate::{Error, Result};

/// How long Prometheus may take to start answering.
const READY: Duration = Duration::from_secs(60);

/// A scrape job: the `job` label and each target's `host:port` with its own labels.
#[derive(Clone, Debug, Default)]
pub struct Job {
    /// The job's name, as the chart's scrape configuration names it.
    pub name: String,
    /// `host:port` of each target, with labels to attach to its series (e.g. `node`).
    pub targets: BTreeMap<String, BTreeMap<String, String>>,
}

/// How a Prometheus behind TLS and basic auth is reached: its `--web.config.file`, the CA
/// that signed its certificate (for `127.0.0.1`), and a user it knows.
#[derive(Clone, Debug)]
pub struct Access {
    /// The web configuration file (`tls_server_config`, `basic_auth_users`).
    pub web_config: PathBuf,
    /// The CA certificate, PEM.
    pub ca_pem: String,
    /// User name and password.
    pub user: (String, String),
}

/// A running Prometheus.
pub struct Prometheus {
    addr: String,
    process: Process,
    client: reqwest::Client,
    access: Option<Access>,
}

impl Prometheus {
    /// Starts Prometheus in `dir` (created) scraping `jobs` every second and evaluating
    /// `rule_files` every second; returns once it is ready.
    /// With `access`, it serves https with basic auth only.
    pub async fn start(
        dir: &Path,
        jobs: &[Job],
        rule_files: &[PathBuf],
        access: Option<Access>,
    ) -> Result<Prometheus> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut scrape_configs = Vec::new();
        for job in jobs {
            let targets = dir.join(format!("targets-{}.json", job.name));
            let groups: Vec<Value> = job
                .targets
                .iter()
                .map(|(addr, labels)| json!({"targets": [addr], "labels": labels}))
                .collect();
            write_json(&targets, &Value::Array(groups))?;
            scrape_configs.push(json!({
                "job_name": job.name,
                "file_sd_configs": [{"files": [targets], "refresh_interval": "1s"}],
            }));
        }
        // JSON is YAML: the configuration is written with serde, never by hand.
        let config = json!({
            "global": {
                "scrape_interval": "1s",
                "scrape_timeout": "1s",
                "evaluation_interval": "1s",
            },
            "rule_files": rule_files,
            "scrape_configs": scrape_configs,
        });
        let config_file = dir.join("prometheus.yml");
        write_json(&config_file, &config)?;
        let addr = format!("127.0.0.1:{}", free_port()?);
        let mut args = vec![
            format!("--config.file={}", config_file.display()),
            format!("--storage.tsdb.path={}", dir.join("data").display()),
            format!("--web.listen-address={addr}"),
            "--log.level=warn".to_string(),
        ];
        let mut client = reqwest::Client::builder();
        if let Some(access) = &access {
            args.push(format!("--web.config.file={}", access.web_config.display()));
            let ca = reqwest::Certificate::from_pem(access.ca_pem.as_bytes()).map_err(|e| {
                Error::Malformed {
                    path: access.web_config.clone(),
                    problem: format!("the CA certificate: {e}"),
                }
            })?;
            client = client.add_root_certificate(ca);
        }
        let client = client.build().map_err(|e| Error::Command {
            command: "an HTTP client for Prometheus".into(),
            status: "failed".into(),
            detail: e.to_string(),
        })?;
        let process = Process::spawn(
            "prometheus",
            Path::new("prometheus"),
            &args,
            &[],
            &dir.join("prometheus.log"),
        )?;
        let prometheus = Prometheus {
            addr,
            process,
            client,
            access,
        };
        prometheus.wait_ready().await?;
        Ok(prometheus)
    }

    /// The base URL of its HTTP API, as a policy's gate names it.
    pub fn url(&self) -> String {
        let scheme = if self.access.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }

    /// A GET of `url` with the credentials Prometheus asks for, if any.
    fn request(&self, url: reqwest::Url) -> reqwest::RequestBuilder {
        let request = self.client.get(url);
        match &self.access {
            Some(Access {
                user: (user, password),
                ..
            }) => request.basic_auth(user, Some(password)),
            None => request,
        }
    }

    /// Kills it, as a crash or a lost network would take it away.
    pub async fn stop(&mut self) {
        self.process.kill().await;
    }

    /// Starts it again with the same configuration and data; returns once it is ready.
    pub async fn start_again(&mut self) -> Result<()> {
        self.process.restart()?;
        self.wait_ready().await
    }

    async fn wait_ready(&self) -> Result<()> {
        let url = reqwest::Url::parse(&format!("{}/-/ready", self.url())).map_err(|e| {
            Error::Command {
                command: "prometheus".into(),
                status: "no URL".into(),
                detail: e.to_string(),
            }
        })?;
        let ready = wait_until("Prometheus to be ready", READY, || {
            let request = self.request(url.clone()).send();
            async move {
                Ok(match request.await {
                    Ok(answer) if answer.status().is_success() => Check::Done(()),
                    Ok(answer) => Check::NotYet(format!("HTTP {}", answer.status())),
                    Err(e) => Check::NotYet(e.to_string()),
                })
            }
        });
        ready.await.map_err(|e| self.with_log(e))
    }

    /// Runs an instant query; returns `data.result`, or an error with Prometheus's own
    /// message when it refuses the query.
    pub async fn query(&self, promql: &str) -> Result<Value> {
        let answer = self
            .get("/api/v1/query", &[("query", promql)])
            .await
            .map_err(|e| self.with_log(e))?;
        Ok(answer["data"]["result"].clone())
    }

    /// The rule groups as Prometheus evaluates them (`/api/v1/rules`), each rule with
    /// its `health` and `lastError`.
    pub async fn rule_groups(&self) -> Result<Vec<Value>> {
        let answer = self.get("/api/v1/rules", &[]).await?;
        Ok(answer["data"]["groups"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// Every metric name Prometheus holds series of.
    pub async fn metric_names(&self) -> Result<Vec<String>> {
        let answer = self.get("/api/v1/label/__name__/values", &[]).await?;
        Ok(answer["data"]
            .as_array()
            .map(|names| {
                names
                    .iter()
                    .filter_map(|n| n.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Waits until `n` targets of `job` answer their scrapes.
    pub async fn wait_scraped(&self, job: &str, n: usize) -> Result<()> {
        let query = format!("count(up{{job={job:?}}} == 1)");
        let what = format!("Prometheus to scrape {n} target(s) of job {job}");
        let scraped = wait_until(&what, READY, || {
            let query = query.clone();
            async move {
                let result = self.query(&query).await?;
                let count = result[0]["value"][1]
                    .as_str()
                    .and_then(|v| v.parse::<f64>().ok());
                Ok(if count == Some(n as f64) {
                    Check::Done(())
                } else {
                    Check::NotYet(format!("{count:?} up"))
                })
            }
        });
        scraped.await
    }

    /// GETs `path` and returns the answer if its `status` is `success`.
    async fn get(&self, path: &str, params: &[(&str, &str)]) -> Result<Value> {
        let base = format!("{}{path}", self.url());
        let failed = |detail: String| Error::Command {
            command: format!("GET {base} {params:?}"),
            status: "failed".into(),
            detail,
        };
        let url =
            reqwest::Url::parse_with_params(&base, params).map_err(|e| failed(e.to_string()))?;
        let answer = self
            .request(url)
            .send()
            .await
            .map_err(|e| failed(e.to_string()))?;
        let body: Value = answer.json().await.map_err(|e| failed(e.to_string()))?;
        if body["status"] != "success" {
            return Err(failed(format!(
                "{}: {}",
                body["errorType"].as_str().unwrap_or("error"),
                body["error"].as_str().unwrap_or("no message")
            )));
        }
        Ok(body)
    }

    /// `error` with the end of Prometheus's log.
    fn with_log(&self, error: Error) -> Error {
        Error::Command {
            command: "prometheus".into(),
            status: error.to_string(),
            detail: self.process.log_tail(10),
        }
    }
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::Malformed {
        path: path.to_path_buf(),
        problem: e.to_string(),
    })?;
    std::fs::write(path, text).map_err(|e| Error::io(path, e))
}
