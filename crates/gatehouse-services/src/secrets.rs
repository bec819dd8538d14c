//! Provider keys at rest: AES-256-GCM under a master key the database never holds
//! (`GATEHOUSE_MASTER_KEY`, or the file `GATEHOUSE_MASTER_KEY_FILE` names). A sealed key reads
//! `v1:{key_id}:{base64url(nonce ‖ ciphertext ‖ tag)}`; `key_id` names the master key (the first
//! eight hex digits of its SHA-256), so a wrong master key is told apart from a damaged value,
//! and the provider's name is the associated data, so a sealed value moved to another provider's
//! row does not open.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Why a master key or a sealed value was refused; every message says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretsError {
    #[error(
        "the master key must be 32 bytes, written as 64 hex digits or base64 (make one with `gatehouse secrets generate`)"
    )]
    BadMasterKey,
    #[error("cannot read the master key file {path}: {reason}")]
    File { path: String, reason: String },
    #[error(
        "provider keys are stored in the database, sealed with master key {0}; set GATEHOUSE_MASTER_KEY (or GATEHOUSE_MASTER_KEY_FILE) to it"
    )]
    Missing(String),
    #[error(
        "the stored provider key of `{provider}` was sealed with master key {sealed_with}, but the master key given is {given}"
    )]
    WrongKey {
        provider: String,
        sealed_with: String,
        given: String,
    },
    #[error("the stored provider key of `{0}` is damaged or was not sealed for this provider")]
    Damaged(String),
    #[error("the system's random number generator failed")]
    Random,
}

/// The master key, ready to seal and open.
pub struct MasterKey {
    id: String,
    key: LessSafeKey,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKey").field("id", &self.id).finish()
    }
}

impl MasterKey {
    /// From its text: 64 hex digits, or base64 (standard or URL-safe, padded or not) of 32 bytes.
    pub fn parse(text: &str) -> Result<Self, SecretsError> {
        let t = text.trim();
        let bytes = if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            (0..32)
                .map(|i| {
                    t.get(i * 2..i * 2 + 2)
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                })
                .collect::<Option<Vec<u8>>>()
                .ok_or(SecretsError::BadMasterKey)?
        } else {
            let unpadded = t.trim_end_matches('=').replace('+', "-").replace('/', "_");
            URL_SAFE_NO_PAD
                .decode(unpadded)
                .map_err(|_| SecretsError::BadMasterKey)?
        };
        if bytes.len() != 32 {
            return Err(SecretsError::BadMasterKey);
        }
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes);
        let id = digest
            .as_ref()
            .iter()
            .take(4)
            .map(|b| format!("{b:02x}"))
            .collect();
        let key = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| SecretsError::BadMasterKey)?;
        Ok(Self {
            id,
            key: LessSafeKey::new(key),
        })
    }

    /// From the environment: `GATEHOUSE_MASTER_KEY`, else the file `GATEHOUSE_MASTER_KEY_FILE`
    /// names; `None` when neither is set.
    pub fn from_env() -> Result<Option<Self>, SecretsError> {
        Self::from_sources(
            std::env::var("GATEHOUSE_MASTER_KEY").ok(),
            std::env::var("GATEHOUSE_MASTER_KEY_FILE").ok(),
        )
    }

    pub fn from_sources(
        value: Option<String>,
        file: Option<String>,
    ) -> Result<Option<Self>, SecretsError> {
        if let Some(v) = value.filter(|v| !v.trim().is_empty()) {
            return Self::parse(&v).map(Some);
        }
        let Some(path) = file.filter(|p| !p.trim().is_empty()) else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(&path).map_err(|e| SecretsError::File {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        Self::parse(&text).map(Some)
    }

    /// A new random master key, as 64 hex digits.
    pub fn generate() -> Result<String, SecretsError> {
        let mut b = [0u8; 32];
        aws_lc_rs::rand::fill(&mut b).map_err(|_| SecretsError::Random)?;
        Ok(b.iter().map(|x| format!("{x:02x}")).collect())
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Seals `plaintext` for `provider`.
    pub fn seal(&self, provider: &str, plaintext: &str) -> Result<String, SecretsError> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| SecretsError::Random)?;
        let mut data = plaintext.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(provider.as_bytes()),
                &mut data,
            )
            .map_err(|_| SecretsError::Random)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        Ok(format!("v1:{}:{}", self.id, URL_SAFE_NO_PAD.encode(out)))
    }

    /// Opens what [`seal`](Self::seal) made for `provider`.
    pub fn open(&self, provider: &str, sealed: &str) -> Result<String, SecretsError> {
        let damaged = || SecretsError::Damaged(provider.to_owned());
        let mut parts = sealed.splitn(3, ':');
        let (Some("v1"), Some(id), Some(body)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(damaged());
        };
        if id != self.id {
            return Err(SecretsError::WrongKey {
                provider: provider.to_owned(),
                sealed_with: id.to_owned(),
                given: self.id.clone(),
            });
        }
        let raw = URL_SAFE_NO_PAD.decode(body).map_err(|_| damaged())?;
        let (nonce, ct) = raw.split_at_checked(NONCE_LEN).ok_or_else(damaged)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| damaged())?;
        let mut data = ct.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(provider.as_bytes()), &mut data)
            .map_err(|_| damaged())?;
        String::from_utf8(plain.to_vec()).map_err(|_| damaged())
    }
}

/// The master key id a sealed value names (`v1:{id}:…`).
pub fn sealed_with(sealed: &str) -> Option<&str> {
    let mut parts = sealed.splitn(3, ':');
    match (parts.next(), parts.next()) {
        (Some("v1"), Some(id)) => Some(id),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_keys_open_with_their_master_key_for_their_provider_only() {
        let hex = MasterKey::generate().unwrap();
        let k = MasterKey::parse(&hex).unwrap();
        let sealed = k.seal("openai", "sk-live-abc123").unwrap();
        assert!(sealed.starts_with(&format!("v1:{}:", k.id())));
        assert!(!sealed.contains("sk-live"));
        assert_eq!(k.open("openai", &sealed).unwrap(), "sk-live-abc123");
        assert_ne!(
            sealed,
            k.seal("openai", "sk-live-abc123").unwrap(),
            "a fresh nonce each time"
        );
        assert_eq!(
            k.open("groq", &sealed),
            Err(SecretsError::Damaged("groq".into())),
            "moved to another provider's row"
        );
        let other = MasterKey::parse(&MasterKey::generate().unwrap()).unwrap();
        assert!(matches!(
            other.open("openai", &sealed),
            Err(SecretsError::WrongKey { .. })
        ));
        let mut tampered = sealed.clone();
        tampered.pop();
        tampered.push(if sealed.ends_with('A') { 'B' } else { 'A' });
        assert!(k.open("openai", &tampered).is_err());
        assert_eq!(sealed_with(&sealed), Some(k.id()));
    }

    #[test]
    fn master_keys_are_32_bytes_in_hex_or_base64() {
        let hex = "00".repeat(32);
        let b64 = base64::engine::general_purpose::STANDARD.encode([0u8; 32]);
        assert_eq!(
            MasterKey::parse(&hex).unwrap().id(),
            MasterKey::parse(&b64).unwrap().id()
        );
        assert_eq!(
            MasterKey::parse("short").unwrap_err(),
            SecretsError::BadMasterKey
        );
        assert_eq!(
            MasterKey::parse(&"00".repeat(31)).unwrap_err(),
            SecretsError::BadMasterKey
        );
        assert!(MasterKey::from_sources(None, None).unwrap().is_none());
    }
}
