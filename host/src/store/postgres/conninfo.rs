//! The TLS parameters of a PostgreSQL connection string, taken out of it
//! before the rest goes to tokio-postgres.
//!
//! tokio-postgres knows `sslmode` `disable`, `prefer` and `require` only,
//! and no `sslrootcert`: it refuses `verify-ca`, `verify-full` and the root
//! file, which libpq reads. The store verifies certificates itself
//! ([`super::tls`]), so both parameters are read here, in either form the
//! driver parses (a `postgres://` URL's query, or libpq's `key=value`
//! words), and removed; everything else is left for the driver, byte for
//! byte, so that it parses what it always parsed.

use std::path::PathBuf;

/// libpq's `sslmode`, `allow` apart (plaintext first, then TLS if the server
/// insists: no use to a service that knows what its server offers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) enum SslMode {
    /// Never TLS.
    Disable,
    /// TLS if the server offers it, plaintext if not; the certificate not
    /// checked (unless a root file is given, as libpq does).
    #[default]
    Prefer,
    /// TLS or no session; the certificate not checked (unless a root file
    /// is given, as libpq does).
    Require,
    /// TLS, the server's certificate signed by a trusted root; any host name.
    VerifyCa,
    /// TLS, the certificate signed by a trusted root and naming the host.
    VerifyFull,
}

impl SslMode {
    /// What the driver is told: whether it asks the server for TLS, and
    /// whether it goes on when refused. The certificate is [`super::tls`]'s.
    pub(super) fn driver_mode(self) -> tokio_postgres::config::SslMode {
        match self {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => tokio_postgres::config::SslMode::Require,
        }
    }

    fn parse(value: &str) -> Result<SslMode, String> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(format!(
                    "sslmode `{other}` is not supported: use disable, prefer, require, verify-ca or verify-full"
                ));
            }
        })
    }
}

/// Where the trusted roots come from (`sslrootcert`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Roots {
    /// The system's trust store (libpq's `sslrootcert=system`).
    System,
    /// A PEM file of root certificates.
    File(PathBuf),
}

/// What the connection string asks of TLS.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(super) struct TlsParams {
    pub(super) mode: SslMode,
    /// `None`: the system's roots, where a mode verifies.
    pub(super) roots: Option<Roots>,
}

/// The parameters the driver does not know, read here.
const TAKEN: [&str; 2] = ["sslmode", "sslrootcert"];

/// `conninfo`'s TLS parameters, and `conninfo` without them (for the
/// driver). The last of a repeated parameter counts, as in libpq. A string
/// the driver could not parse is handed on as it is (the driver then says
/// what is wrong with it).
pub(super) fn take_tls_params(conninfo: &str) -> Result<(String, TlsParams), String> {
    let (rest, found) = match url_query(conninfo) {
        Some(query) => take_from_url(conninfo, query),
        None => take_from_words(conninfo),
    };
    let mut params = TlsParams::default();
    for (key, value) in found {
        match key {
            "sslmode" => params.mode = SslMode::parse(&value)?,
            // An empty value is libpq's "not given".
            _ if value.is_empty() => params.roots = None,
            _ if value == "system" => params.roots = Some(Roots::System),
            _ => params.roots = Some(Roots::File(PathBuf::from(value))),
        }
    }
    Ok((rest, params))
}

/// Where a `postgres://` URL's query starts (after its `?`), or `None` for
/// the `key=value` form; a URL without a query has an empty one at its end.
/// The driver's parser takes everything up to the first `@` for the
/// credentials, then the first `?` after that for the query: so does this.
fn url_query(conninfo: &str) -> Option<usize> {
    let prefix = ["postgres://", "postgresql://"].into_iter().find(|p| conninfo.starts_with(p))?;
    let after_credentials = conninfo.find('@').map_or(prefix.len(), |at| at + 1);
    Some(conninfo[after_credentials..].find('?').map_or(conninfo.len(), |q| after_credentials + q + 1))
}

/// The URL form: the query's `key=value` pairs, split on `&`, keys and
/// values percent-decoded.
fn take_from_url(url: &str, query_at: usize) -> (String, Vec<(&'static str, String)>) {
    let mut found = Vec::new();
    let mut kept = Vec::new();
    for pair in url[query_at..].split('&').filter(|p| !p.is_empty()) {
        let taken = pair.split_once('=').and_then(|(key, value)| {
            let key = percent_encoding::percent_decode_str(key).decode_utf8().ok()?;
            let key = TAKEN.into_iter().find(|t| *t == key)?;
            Some((key, percent_encoding::percent_decode_str(value).decode_utf8_lossy().into_owned()))
        });
        match taken {
            Some(param) => found.push(param),
            None => kept.push(pair),
        }
    }
    let base = url[..query_at].trim_end_matches('?');
    let rest = if kept.is_empty() { base.to_string() } else { format!("{base}?{}", kept.join("&")) };
    (rest, found)
}

/// The `key=value` form, read as the driver reads it (whitespace between
/// pairs and around `=`; a value bare or in single quotes, `\` escaping
/// the next character): the taken pairs are cut out of the text.
fn take_from_words(text: &str) -> (String, Vec<(&'static str, String)>) {
    let mut found = Vec::new();
    let mut rest = String::with_capacity(text.len());
    let mut words = Words { text, at: 0 };
    let mut kept_from = 0;
    loop {
        let start = words.skip_whitespace();
        let Some((key, value)) = words.pair() else { break };
        if let Some(key) = TAKEN.into_iter().find(|t| *t == key) {
            rest.push_str(&text[kept_from..start]);
            kept_from = words.at;
            found.push((key, value));
        }
    }
    // Whatever could not be read stays, for the driver to refuse.
    rest.push_str(&text[kept_from..]);
    (rest, found)
}

/// A cursor over `key=value` words.
struct Words<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Words<'a> {
    fn peek(&self) -> Option<char> {
        self.text[self.at..].chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.at += c.len_utf8();
        Some(c)
    }

    /// Skips whitespace; where the next word starts.
    fn skip_whitespace(&mut self) -> usize {
        while self.peek().is_some_and(char::is_whitespace) {
            self.bump();
        }
        self.at
    }

    /// The next pair, or `None` at the end or at anything malformed.
    fn pair(&mut self) -> Option<(&'a str, String)> {
        let start = self.at;
        while self.peek().is_some_and(|c| !c.is_whitespace() && c != '=') {
            self.bump();
        }
        let key = &self.text[start..self.at];
        if key.is_empty() {
            return None;
        }
        self.skip_whitespace();
        if self.bump() != Some('=') {
            return None;
        }
        self.skip_whitespace();
        let value = if self.peek() == Some('\'') {
            self.bump();
            let value = self.until(|c| c == '\'');
            (self.bump() == Some('\'')).then_some(value)?
        } else {
            Some(self.until(char::is_whitespace)).filter(|v| !v.is_empty())?
        };
        Some((key, value))
    }

    /// Characters up to (not including) the first unescaped `end`.
    fn until(&mut self, end: impl Fn(char) -> bool) -> String {
        let mut value = String::new();
        while let Some(c) = self.peek().filter(|c| !end(*c)) {
            self.bump();
            if c == '\\' {
                value.extend(self.bump());
            } else {
                value.push(c);
            }
        }
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take(conninfo: &str) -> (String, TlsParams) {
        take_tls_params(conninfo).unwrap()
    }

    fn params(mode: SslMode, roots: Option<Roots>) -> TlsParams {
        TlsParams { mode, roots }
    }

    #[test]
    fn a_url_without_tls_parameters_is_left_as_it_is() {
        for url in [
            "postgres://root@127.0.0.1:5432/test",
            "postgresql://u:p@h/db?options=-c%20search_path%3Dx",
            "postgres://h,g:5433/db?target_session_attrs=read-write&application_name=a",
        ] {
            assert_eq!(take(url), (url.to_string(), TlsParams::default()), "{url}");
        }
    }

    #[test]
    fn the_url_form_gives_up_its_sslmode_and_sslrootcert() {
        let (rest, found) =
            take("postgres://u@localhost/test?sslmode=verify-full&options=-c%20x%3Dy&sslrootcert=%2Fetc%2Fca.pem");
        assert_eq!(rest, "postgres://u@localhost/test?options=-c%20x%3Dy");
        assert_eq!(found, params(SslMode::VerifyFull, Some(Roots::File("/etc/ca.pem".into()))));

        let (rest, found) = take("postgres://u@h/db?sslmode=verify-ca");
        assert_eq!((rest.as_str(), found), ("postgres://u@h/db", params(SslMode::VerifyCa, None)));
        let (_, found) = take("postgres://h/db?sslmode=require&sslrootcert=system&sslmode=disable");
        assert_eq!(found, params(SslMode::Disable, Some(Roots::System)), "the last one counts");
    }

    #[test]
    fn a_question_mark_or_parameter_in_the_password_is_not_the_query() {
        let url = "postgres://u:pa?sslmode=disable@h/db?sslmode=require";
        let (rest, found) = take(url);
        assert_eq!(rest, "postgres://u:pa?sslmode=disable@h/db");
        assert_eq!(found.mode, SslMode::Require);
    }

    #[test]
    fn the_key_value_form_gives_up_its_sslmode_and_sslrootcert() {
        let (rest, found) =
            take("host=localhost  sslmode = verify-full user=root sslrootcert='/a b/c\\'s.pem' dbname=x");
        assert_eq!(rest, "host=localhost   user=root  dbname=x");
        assert_eq!(found, params(SslMode::VerifyFull, Some(Roots::File("/a b/c's.pem".into()))));
        assert_eq!(take("host=h sslmode=disable"), ("host=h ".to_string(), params(SslMode::Disable, None)));
    }

    #[test]
    fn malformed_words_are_left_for_the_driver() {
        // A key without `=`: nothing is taken from there on.
        let (rest, found) = take("host=h user sslmode=require");
        assert_eq!((rest.as_str(), found), ("host=h user sslmode=require", TlsParams::default()));
        // As for the driver, a value may follow `=` after whitespace.
        assert!(take_tls_params("host=h sslmode= disable").is_ok());
    }

    #[test]
    fn an_unknown_sslmode_is_refused_by_name() {
        for bad in ["postgres://h/db?sslmode=allow", "host=h sslmode=verify_full"] {
            let err = take_tls_params(bad).unwrap_err();
            assert!(err.contains("sslmode") && err.contains("verify-full"), "{err}");
        }
    }
}
