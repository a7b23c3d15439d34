//! What a service reads from its environment, checked before it listens.

use std::time::Duration;

/// Which of the three services this process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    Order,
    Payment,
}

impl Role {
    /// The service's name, as the mesh names it.
    pub fn name(self) -> &'static str {
        match self {
            Role::User => "user-service",
            Role::Order => "order-service",
            Role::Payment => "payment-service",
        }
    }

    /// The environment variable holding the base URL of the service this one calls, and its
    /// default (the Service's name in the same namespace, on the mesh's port).
    pub fn upstream_variable(self) -> Option<(&'static str, &'static str)> {
        match self {
            Role::User => Some(("ORDER_SERVICE_URL", "http://order-service:5000")),
            Role::Order => Some(("PAYMENT_SERVICE_URL", "http://payment-service:5000")),
            Role::Payment => None,
        }
    }
}

/// A variable set to something the service cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{variable}={value:?}: {expected}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub value: String,
    pub expected: &'static str,
}

/// The service's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub role: Role,
    /// `PORT`: where it listens (all addresses). Default 5000; 0 picks a free port (the
    /// `listening` log line says which).
    pub port: u16,
    /// `ORDER_SERVICE_URL` / `PAYMENT_SERVICE_URL`: the service it calls (`http://host:port`).
    pub upstream: Option<String>,
    /// `UPSTREAM_TIMEOUT_MS`: how long a call to the upstream may take. Default 2000.
    pub upstream_timeout: Duration,
    /// `SHUTDOWN_DRAIN_MS`: after SIGTERM, how long the service still accepts requests while
    /// `/readyz` answers 503, so that the endpoints stop sending it traffic before it stops
    /// listening. Default 3000.
    pub shutdown_drain: Duration,
    /// `SHUTDOWN_GRACE_MS`: then, how long in-flight requests may take. Default 10000 (drain and
    /// grace fit Kubernetes' default 30 s termination grace period).
    pub shutdown_grace: Duration,
    /// `PAYMENT_WORK_ROUNDS`: payment-service's CPU work per request. Default 200000 (about a
    /// millisecond of one core).
    pub work_rounds: u32,
}

impl Config {
    /// The settings from `var` (the process environment: `|k| std::env::var(k).ok()`).
    pub fn from_env(
        role: Role,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let number = |variable: &'static str, default: u64, max: u64| match var(variable) {
            None => Ok(default),
            Some(value) => match value.trim().parse::<u64>() {
                Ok(n) if n <= max => Ok(n),
                _ => Err(ConfigError {
                    variable,
                    value,
                    expected: "a whole number in range",
                }),
            },
        };
        let port = number("PORT", 5000, u64::from(u16::MAX))?;
        let upstream = match role.upstream_variable() {
            None => None,
            Some((variable, default)) => {
                let value = var(variable).unwrap_or_else(|| default.to_owned());
                Some(check_base_url(variable, value)?)
            }
        };
        Ok(Config {
            role,
            port: u16::try_from(port).unwrap_or(5000),
            upstream,
            upstream_timeout: Duration::from_millis(number("UPSTREAM_TIMEOUT_MS", 2000, 600_000)?),
            shutdown_drain: Duration::from_millis(number("SHUTDOWN_DRAIN_MS", 3000, 600_000)?),
            shutdown_grace: Duration::from_millis(number("SHUTDOWN_GRACE_MS", 10_000, 600_000)?),
            work_rounds: u32::try_from(number("PAYMENT_WORK_ROUNDS", 200_000, 100_000_000)?)
                .unwrap_or(200_000),
        })
    }
}

/// `http://host[:port]`, without a path (the service appends its own), trailing `/` dropped.
fn check_base_url(variable: &'static str, value: String) -> Result<String, ConfigError> {
    let bad = |value: String| ConfigError {
        variable,
        value,
        expected: "a base URL http://HOST[:PORT] with no path",
    };
    let trimmed = value.trim_end_matches('/');
    let Some(authority) = trimmed.strip_prefix("http://") else {
        return Err(bad(value));
    };
    let valid = !authority.is_empty()
        && authority
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b));
    if !valid || trimmed.parse::<hyper::Uri>().is_err() {
        return Err(bad(value));
    }
    Ok(trimmed.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn defaults_name_the_next_service_on_the_mesh_port() {
        let c = Config::from_env(Role::User, env(&[])).ok();
        assert_eq!(
            c.as_ref().and_then(|c| c.upstream.as_deref()),
            Some("http://order-service:5000")
        );
        assert_eq!(c.map(|c| c.port), Some(5000));
        let p = Config::from_env(Role::Payment, env(&[])).ok();
        assert_eq!(p.and_then(|c| c.upstream), None);
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (k, v) in [
            ("PORT", "70000"),
            ("PORT", "x"),
            ("ORDER_SERVICE_URL", "https://order-service:5000"),
            ("ORDER_SERVICE_URL", "http://order-service:5000/orders"),
            ("ORDER_SERVICE_URL", "http://"),
            ("UPSTREAM_TIMEOUT_MS", "-1"),
        ] {
            let e = Config::from_env(Role::User, env(&[(k, v)])).err();
            assert_eq!(e.map(|e| e.variable), Some(k), "{k}={v}");
        }
        let ok = Config::from_env(
            Role::User,
            env(&[("ORDER_SERVICE_URL", "http://127.0.0.1:1/")]),
        );
        assert_eq!(
            ok.ok().and_then(|c| c.upstream).as_deref(),
            Some("http://127.0.0.1:1")
        );
    }
}
