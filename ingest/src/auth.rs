//! Bearer-token authentication of OTLP senders, and the tenant each token binds.
//!
//! The tokens file is YAML mapping each tenant to the SHA-256 hashes of its
//! tokens, written `sha256:<hex>`; tokens themselves are never stored or
//! logged. A sender presents `Authorization: Bearer <token>` (what OTel
//! exporters send with `OTEL_EXPORTER_OTLP_HEADERS`); vigil hashes it and looks
//! the hash up, so the tenant of every event comes from the credential, never
//! from the payload. The file is re-read on SIGHUP; a broken file keeps the
//! tokens already loaded.
//!
//! With mTLS on, an entry `cn:<common name>` binds senders whose verified
//! client certificate has that subject common name to the tenant, so a
//! gateway can authenticate with its certificate instead of a token.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{path}: cannot read the tokens file: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path} names no token and no certificate: every sender would be refused (add `<tenant>: [sha256:...]`, from `vigil token hash`)")]
    Empty { path: PathBuf },
    #[error("{path}: tenant `{tenant}`: {message}")]
    Invalid {
        path: PathBuf,
        tenant: String,
        message: String,
    },
}

/// `sha256:<hex>` of a token, the form the tokens file holds.
pub fn hash_token(token: &str) -> String {
    format!(
        "sha256:{}",
        hex::encode(Sha256::digest(token.trim().as_bytes()))
    )
}

/// The loaded credentials: token hash -> tenant, certificate name -> tenant.
#[derive(Debug, Default)]
pub struct TokenStore {
    by_hash: HashMap<[u8; 32], Arc<str>>,
    by_cn: HashMap<String, Arc<str>>,
}

impl TokenStore {
    pub fn load(path: &Path) -> Result<TokenStore, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<TokenStore, AuthError> {
        if text.trim().is_empty() {
            return Err(AuthError::Empty {
                path: path.to_path_buf(),
            });
        }
        let map: BTreeMap<String, Vec<String>> =
            serde_yaml::from_str(text).map_err(|e| AuthError::Parse {
                path: path.to_path_buf(),
                line: e.location().map_or(0, |l| l.line()),
                message: e.to_string(),
            })?;
        let mut by_hash = HashMap::new();
        let mut by_cn: HashMap<String, Arc<str>> = HashMap::new();
        for (tenant, hashes) in map {
            let invalid = |message: String| AuthError::Invalid {
                path: path.to_path_buf(),
                tenant: tenant.clone(),
                message,
            };
            if tenant.trim().is_empty() {
                return Err(invalid("a tenant name is empty".into()));
            }
            let name: Arc<str> = tenant.as_str().into();
            for h in hashes {
                if let Some(cn) = h.strip_prefix("cn:") {
                    let cn = cn.trim();
                    if cn.is_empty() {
                        return Err(invalid("`cn:` needs a certificate common name".into()));
                    }
                    if let Some(other) = by_cn.insert(cn.to_string(), name.clone()) {
                        if other != name {
                            return Err(invalid(format!(
                                "certificate name `{cn}` is also listed for tenant `{other}`"
                            )));
                        }
                    }
                    continue;
                }
                let hex_part = h.strip_prefix("sha256:").ok_or_else(|| {
                    invalid("entries are `sha256:<64 hex digits>` (vigil token hash prints one) or `cn:<client certificate common name>`; a token in clear is not accepted".into())
                })?;
                let bytes = hex::decode(hex_part)
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok());
                let bytes = bytes.ok_or_else(|| {
                    invalid(format!("`{h}` is not sha256: followed by 64 hex digits"))
                })?;
                if let Some(other) = by_hash.insert(bytes, name.clone()) {
                    if other != name {
                        return Err(invalid(format!(
                            "a token hash is also listed for tenant `{other}`"
                        )));
                    }
                }
            }
        }
        if by_hash.is_empty() && by_cn.is_empty() {
            return Err(AuthError::Empty {
                path: path.to_path_buf(),
            });
        }
        Ok(TokenStore { by_hash, by_cn })
    }

    /// The tenant a verified client certificate's common name belongs to.
    pub fn tenant_for_cn(&self, cn: &str) -> Option<Arc<str>> {
        self.by_cn.get(cn).cloned()
    }

    /// The tenant a presented token belongs to.
    pub fn tenant_for(&self, token: &str) -> Option<Arc<str>> {
        let digest: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
        self.by_hash.get(&digest).cloned()
    }

    /// Credentials listed: token hashes and certificate names.
    pub fn len(&self) -> usize {
        self.by_hash.len() + self.by_cn.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Missing,
    Invalid,
    /// A verified client certificate whose name no tenant lists, and no token.
    UnknownCertificate,
}

impl Refusal {
    pub fn message(self) -> &'static str {
        match self {
            Refusal::Missing => "authentication required: send Authorization: Bearer <token>",
            Refusal::Invalid => "the bearer token is not valid",
            Refusal::UnknownCertificate => {
                "the client certificate's common name is bound to no tenant, and no bearer token was sent"
            }
        }
    }
}

/// The tokens in force, swapped whole on reload.
#[derive(Debug)]
pub struct Authenticator {
    path: PathBuf,
    store: RwLock<Arc<TokenStore>>,
}

impl Authenticator {
    pub fn open(path: &Path) -> Result<Self, AuthError> {
        let store = TokenStore::load(path)?;
        Ok(Authenticator {
            path: path.to_path_buf(),
            store: RwLock::new(Arc::new(store)),
        })
    }

    /// Re-reads the file; on error the tokens already loaded stay in force.
    pub fn reload(&self) -> Result<usize, AuthError> {
        let fresh = Arc::new(TokenStore::load(&self.path)?);
        let n = fresh.len();
        if let Ok(mut g) = self.store.write() {
            *g = fresh;
        }
        Ok(n)
    }

    pub fn tokens(&self) -> usize {
        self.store.read().map(|s| s.len()).unwrap_or(0)
    }

    /// The tenant for a verified client certificate name (mTLS) or, failing
    /// that, an `Authorization` header value.
    pub fn check(
        &self,
        authorization: Option<&str>,
        client_cn: Option<&str>,
    ) -> Result<Arc<str>, Refusal> {
        let store = self.store.read().map_err(|_| Refusal::Invalid)?.clone();
        if let Some(tenant) = client_cn.and_then(|cn| store.tenant_for_cn(cn)) {
            return Ok(tenant);
        }
        let missing = if client_cn.is_some() {
            Refusal::UnknownCertificate
        } else {
            Refusal::Missing
        };
        let value = authorization
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .ok_or(missing)?;
        let (scheme, token) = value.split_once(' ').ok_or(Refusal::Invalid)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(Refusal::Invalid);
        }
        store.tenant_for(token).ok_or(Refusal::Invalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_bind_tenants_and_are_only_kept_hashed() {
        let text = format!(
            "acme:\n  - {}\nglobex: [{}]\n",
            hash_token("s3cret-acme"),
            hash_token("globex-1")
        );
        let store = TokenStore::parse(&text, Path::new("tokens.yaml")).expect("parses");
        assert_eq!(store.tenant_for("s3cret-acme").as_deref(), Some("acme"));
        assert_eq!(store.tenant_for("globex-1").as_deref(), Some("globex"));
        assert_eq!(store.tenant_for("guess"), None);
        assert!(!text.contains("s3cret-acme"));
    }

    #[test]
    fn a_file_with_no_credentials_is_refused_and_a_reload_keeps_the_old_ones() {
        for text in ["", "  \n", "acme: []\n", "{}\n"] {
            let e = TokenStore::parse(text, Path::new("tokens.yaml")).unwrap_err();
            assert!(matches!(e, AuthError::Empty { .. }), "{text:?}: {e}");
            assert!(
                e.to_string().contains("every sender would be refused"),
                "{e}"
            );
        }
        let dir = std::env::temp_dir().join(format!("vigil-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokens.yaml");
        std::fs::write(&path, format!("acme: [{}]\n", hash_token("t"))).unwrap();
        let auth = Authenticator::open(&path).unwrap();
        std::fs::write(&path, "").unwrap();
        assert!(matches!(auth.reload(), Err(AuthError::Empty { .. })));
        assert_eq!(
            auth.check(Some("Bearer t"), None).as_deref().ok(),
            Some("acme")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn malformed_files_say_where_and_why() {
        let err = TokenStore::parse("acme: [my-token-in-clear]\n", Path::new("t.yaml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("t.yaml") && err.contains("acme") && err.contains("sha256:"),
            "{err}"
        );
        let err = TokenStore::parse("acme: [sha256:abcd]\n", Path::new("t.yaml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("64 hex digits"), "{err}");
        let err = TokenStore::parse("acme:\n  - [nested\n", Path::new("t.yaml"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("t.yaml:"), "{err}");
        let h = hash_token("shared");
        let err = TokenStore::parse(&format!("a: [{h}]\nb: [{h}]\n"), Path::new("t.yaml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("also listed"), "{err}");
    }

    impl Authenticator {
        fn check_token(&self, authorization: Option<&str>) -> Result<Arc<str>, Refusal> {
            self.check(authorization, None)
        }
    }

    #[test]
    fn certificate_names_bind_tenants_before_tokens() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tokens.yaml");
        let text = format!(
            "acme: [{}, 'cn:gw-1.acme']
",
            hash_token("tok-1")
        );
        std::fs::write(&path, text).unwrap();
        let auth = Authenticator::open(&path).expect("opens");
        assert_eq!(auth.check(None, Some("gw-1.acme")).as_deref(), Ok("acme"));
        assert_eq!(
            auth.check(None, Some("stranger")),
            Err(Refusal::UnknownCertificate)
        );
        assert_eq!(
            auth.check(Some("Bearer tok-1"), Some("stranger"))
                .as_deref(),
            Ok("acme"),
            "an unbound certificate may still send a valid token"
        );
        let err = TokenStore::parse(
            "a: ['cn:x']
b: ['cn:x']
",
            Path::new("t.yaml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("also listed"), "{err}");
        assert!(TokenStore::parse(
            "a: ['cn: ']
",
            Path::new("t.yaml")
        )
        .is_err());
    }

    #[test]
    fn authorization_headers_are_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tokens.yaml");
        std::fs::write(&path, format!("acme: [{}]\n", hash_token("tok-1"))).unwrap();
        let auth = Authenticator::open(&path).expect("opens");
        assert_eq!(
            auth.check_token(Some("Bearer tok-1")).as_deref(),
            Ok("acme")
        );
        assert_eq!(
            auth.check_token(Some("bearer  tok-1 ")).as_deref(),
            Ok("acme")
        );
        assert_eq!(auth.check_token(None), Err(Refusal::Missing));
        assert_eq!(
            auth.check_token(Some("Basic dG9rLTE=")),
            Err(Refusal::Invalid)
        );
        assert_eq!(
            auth.check_token(Some("Bearer tok-2")),
            Err(Refusal::Invalid)
        );
        std::fs::write(
            &path,
            format!(
                "acme: [{}]\nnew: [{}]\n",
                hash_token("tok-1"),
                hash_token("tok-2")
            ),
        )
        .unwrap();
        assert_eq!(auth.reload().expect("reloads"), 2);
        assert_eq!(auth.check_token(Some("Bearer tok-2")).as_deref(), Ok("new"));
        std::fs::write(&path, "broken: [").unwrap();
        assert!(auth.reload().is_err());
        assert_eq!(
            auth.check_token(Some("Bearer tok-2")).as_deref(),
            Ok("new"),
            "a bad reload keeps the tokens in force"
        );
    }
}
