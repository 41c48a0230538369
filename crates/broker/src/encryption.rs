//! Encryption at rest of message values, in Liftbridge's format byte for byte.
//!
//! The master key (key-encryption key, KEK) is the raw bytes of `LIFTBRIDGE_ENCRYPTION_KEY`:
//! 16 or 32 bytes. Each partition's leader draws a random 32-byte data key (DEK) when it starts,
//! wraps it under the KEK with AES key wrap with padding (RFC 5649), and seals each value as
//!
//! ```text
//! [1 byte L][L bytes: the wrapped DEK][12 bytes: nonce][AES-256-GCM ciphertext][16 bytes: tag]
//! ```
//!
//! with a fresh random nonce per value and no associated data: 69 bytes more than the value for
//! a 32-byte DEK. Only values are encrypted; keys (so compaction works), headers, timestamps
//! and offsets are not. Followers copy the sealed bytes; every read opens them.

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng};
use aes_gcm::{Aes256Gcm, Nonce};

/// Bytes of the GCM nonce.
const NONCE_LEN: usize = 12;
/// Bytes of the GCM tag.
const TAG_LEN: usize = 16;

/// Why a value could not be sealed or opened, or a key not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncryptionError {
    /// The master key has the wrong length.
    #[error(
        "LIFTBRIDGE_ENCRYPTION_KEY must be 16 or 32 bytes (AES-128 or AES-256 key wrap), not {0}"
    )]
    KeySize(usize),
    /// The stored value is shorter than its own header says.
    #[error("a stored value of {0} bytes is too short to be an encrypted value")]
    Truncated(usize),
    /// The data key does not unwrap under this master key.
    #[error(
        "the value's data key does not unwrap under this LIFTBRIDGE_ENCRYPTION_KEY: the key differs from the one that wrote it"
    )]
    WrongKey,
    /// The value does not decrypt (damaged, or not encrypted at all).
    #[error("the value does not decrypt: it is damaged or was not written encrypted")]
    Damaged,
    /// Sealing failed.
    #[error("encryption failed: {0}")]
    Seal(String),
}

/// The master key: AES-128 or AES-256 key wrap.
#[derive(Clone)]
pub struct MasterKey(std::sync::Arc<Kek>);

#[allow(clippy::large_enum_variant)] // one per server, behind an Arc
enum Kek {
    Aes128(aes_kw::KekAes128),
    Aes256(aes_kw::KekAes256),
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// A master key from its raw bytes (16 or 32).
    ///
    /// # Errors
    /// [`EncryptionError::KeySize`].
    pub fn new(raw: &[u8]) -> Result<MasterKey, EncryptionError> {
        match raw.len() {
            16 => Ok(MasterKey(std::sync::Arc::new(Kek::Aes128(
                aes_kw::KekAes128::try_from(raw).map_err(|_| EncryptionError::KeySize(16))?,
            )))),
            32 => Ok(MasterKey(std::sync::Arc::new(Kek::Aes256(
                aes_kw::KekAes256::try_from(raw).map_err(|_| EncryptionError::KeySize(32))?,
            )))),
            n => Err(EncryptionError::KeySize(n)),
        }
    }

    fn wrap(&self, dek: &[u8]) -> Result<Vec<u8>, EncryptionError> {
        match &*self.0 {
            Kek::Aes128(k) => k.wrap_with_padding_vec(dek),
            Kek::Aes256(k) => k.wrap_with_padding_vec(dek),
        }
        .map_err(|e| EncryptionError::Seal(e.to_string()))
    }

    fn unwrap(&self, wrapped: &[u8]) -> Result<Vec<u8>, EncryptionError> {
        match &*self.0 {
            Kek::Aes128(k) => k.unwrap_with_padding_vec(wrapped),
            Kek::Aes256(k) => k.unwrap_with_padding_vec(wrapped),
        }
        .map_err(|_| EncryptionError::WrongKey)
    }

    /// Opens a stored value.
    ///
    /// # Errors
    /// [`EncryptionError::Truncated`], [`EncryptionError::WrongKey`],
    /// [`EncryptionError::Damaged`]; never garbage.
    pub fn open(&self, stored: &[u8]) -> Result<Vec<u8>, EncryptionError> {
        let truncated = || EncryptionError::Truncated(stored.len());
        let (&len, rest) = stored.split_first().ok_or_else(truncated)?;
        let len = usize::from(len);
        if rest.len() < len + NONCE_LEN + TAG_LEN {
            return Err(truncated());
        }
        let (wrapped, rest) = rest.split_at(len);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let dek = self.unwrap(wrapped)?;
        let cipher = Aes256Gcm::new_from_slice(&dek).map_err(|_| EncryptionError::Damaged)?;
        cipher
            .decrypt(Nonce::from_slice(nonce), sealed)
            .map_err(|_| EncryptionError::Damaged)
    }
}

/// How many values one data key seals before the sealer draws a new one. NIST SP 800-38D bounds
/// a key used with random 96-bit nonces to 2³² invocations; a new key well before that keeps the
/// chance of a repeated nonce negligible. Every sealed value carries its own wrapped data key,
/// so a new key changes nothing for readers.
pub const VALUES_PER_DATA_KEY: u64 = 1 << 31;

/// A partition leader's sealer: a data key, wrapped once, for up to
/// [`VALUES_PER_DATA_KEY`] values; then a fresh one.
#[derive(Clone)]
pub struct Sealer {
    master: MasterKey,
    limit: u64,
    current: std::sync::Arc<parking_lot::Mutex<Keyed>>,
}

/// One data key: its cipher, the header every value it seals starts with, and how many values
/// it sealed.
struct Keyed {
    key: std::sync::Arc<DataKey>,
    sealed: u64,
}

struct DataKey {
    cipher: Aes256Gcm,
    /// `[L][wrapped DEK]`, the prefix of every sealed value.
    header: Vec<u8>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

impl Sealer {
    /// A sealer with a fresh random data key.
    ///
    /// # Errors
    /// [`EncryptionError::Seal`].
    pub fn new(master: &MasterKey) -> Result<Sealer, EncryptionError> {
        Self::with_limit(master, VALUES_PER_DATA_KEY)
    }

    /// A sealer that draws a new data key after `limit` values.
    fn with_limit(master: &MasterKey, limit: u64) -> Result<Sealer, EncryptionError> {
        let dek = Aes256Gcm::generate_key(OsRng);
        Self::with_key_and_limit(master, &dek, limit)
    }

    #[cfg(test)]
    fn with_key(master: &MasterKey, dek: &[u8]) -> Result<Sealer, EncryptionError> {
        Self::with_key_and_limit(master, dek, VALUES_PER_DATA_KEY)
    }

    fn with_key_and_limit(
        master: &MasterKey,
        dek: &[u8],
        limit: u64,
    ) -> Result<Sealer, EncryptionError> {
        Ok(Sealer {
            master: master.clone(),
            limit: limit.max(1),
            current: std::sync::Arc::new(parking_lot::Mutex::new(Keyed {
                key: std::sync::Arc::new(DataKey::new(master, dek)?),
                sealed: 0,
            })),
        })
    }

    /// The data key for the next value: the current one, or a fresh one once the current one
    /// sealed its share.
    fn next_key(&self) -> Result<std::sync::Arc<DataKey>, EncryptionError> {
        let mut cur = self.current.lock();
        if cur.sealed >= self.limit {
            let dek = Aes256Gcm::generate_key(OsRng);
            cur.key = std::sync::Arc::new(DataKey::new(&self.master, &dek)?);
            cur.sealed = 0;
        }
        cur.sealed += 1;
        Ok(cur.key.clone())
    }

    /// Seals a value with a fresh random nonce.
    ///
    /// # Errors
    /// [`EncryptionError::Seal`].
    pub fn seal(&self, value: &[u8]) -> Result<Vec<u8>, EncryptionError> {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        self.seal_with(&nonce, value)
    }

    fn seal_with(
        &self,
        nonce: &Nonce<aes_gcm::aes::cipher::consts::U12>,
        value: &[u8],
    ) -> Result<Vec<u8>, EncryptionError> {
        let key = self.next_key()?;
        let sealed = key
            .cipher
            .encrypt(nonce, value)
            .map_err(|e| EncryptionError::Seal(e.to_string()))?;
        let mut out = Vec::with_capacity(key.header.len() + NONCE_LEN + sealed.len());
        out.extend_from_slice(&key.header);
        out.extend_from_slice(nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }
}

impl DataKey {
    fn new(master: &MasterKey, dek: &[u8]) -> Result<DataKey, EncryptionError> {
        let wrapped = master.wrap(dek)?;
        let len = u8::try_from(wrapped.len())
            .map_err(|_| EncryptionError::Seal("wrapped key too long".into()))?;
        let mut header = Vec::with_capacity(1 + wrapped.len());
        header.push(len);
        header.extend_from_slice(&wrapped);
        Ok(DataKey {
            cipher: Aes256Gcm::new_from_slice(dek)
                .map_err(|e| EncryptionError::Seal(e.to_string()))?,
            header,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn the_known_answer_vector() {
        let master = MasterKey::new(b"t7w!z%C*F-JaNcRf").unwrap();
        let dek: Vec<u8> = (0u8..32).collect();
        let nonce: Vec<u8> = (0u8..12).collect();
        let sealer = Sealer::with_key(&master, &dek).unwrap();
        let out = sealer
            .seal_with(Nonce::from_slice(&nonce), b"exampleplaintext")
            .unwrap();
        assert_eq!(
            hex(&out),
            concat!(
                "280a5018f355c047195ce9d9943e21c2162af7d6b85618ef2bae598cf81cc8d9dd66b162da2d6649b5",
                "000102030405060708090a0b",
                "227ab776b589a76be120fee5c58c00195f7fdc72bd464c08d45ec91a625a7000"
            )
        );
        assert_eq!(out.len(), 85);
        assert_eq!(master.open(&out).unwrap(), b"exampleplaintext");
    }

    #[test]
    fn a_value_round_trips_under_either_key_size_and_nothing_else_opens_it() {
        for raw in [
            &b"+KbPeShVmYq3t6w9"[..],
            &b"/A?D(G+KbPdSgVkYp3s6v9y$B&E)H@Mc"[..],
        ] {
            let master = MasterKey::new(raw).unwrap();
            let sealer = Sealer::new(&master).unwrap();
            let a = sealer.seal(b"secret").unwrap();
            let b = sealer.seal(b"secret").unwrap();
            assert_ne!(a, b, "a fresh nonce each time");
            assert_eq!(a.len(), 6 + 69);
            assert!(!a.windows(6).any(|w| w == b"secret"));
            assert_eq!(master.open(&a).unwrap(), b"secret");
            let other = MasterKey::new(b"0123456789abcdef").unwrap();
            assert_eq!(other.open(&a), Err(EncryptionError::WrongKey));
            let mut flipped = a.clone();
            let last = flipped.len() - 1;
            flipped[last] ^= 1;
            assert_eq!(master.open(&flipped), Err(EncryptionError::Damaged));
            for n in [0, 1, 41, 60] {
                assert!(master.open(&a[..n]).is_err(), "{n} bytes");
            }
            assert!(master.open(b"plain text, never sealed").is_err());
        }
        assert_eq!(
            MasterKey::new(b"something-in-correct").unwrap_err(),
            EncryptionError::KeySize(20)
        );
        assert!(
            MasterKey::new(b"")
                .unwrap_err()
                .to_string()
                .contains("16 or 32 bytes")
        );
    }

    /// A data key seals a bounded number of values (NIST SP 800-38D's bound for random
    /// nonces), then the sealer draws a new one; every value still opens.
    #[test]
    fn the_data_key_is_replaced_after_its_share_of_values() {
        let master = MasterKey::new(b"t7w!z%C*F-JaNcRf").unwrap();
        let sealer = Sealer::with_limit(&master, 3).unwrap();
        let shared = sealer.clone();
        let values: Vec<Vec<u8>> = (0..7u8)
            .map(|i| {
                let s = if i % 2 == 0 { &sealer } else { &shared };
                s.seal(&[i; 5]).unwrap()
            })
            .collect();
        let header = |v: &Vec<u8>| v[..1 + usize::from(v[0])].to_vec();
        let keys: Vec<Vec<u8>> = values.iter().map(header).collect();
        assert_eq!(keys[0], keys[2]);
        assert_ne!(keys[2], keys[3], "a new data key after three values");
        assert_eq!(keys[3], keys[5]);
        assert_ne!(keys[5], keys[6]);
        for (i, v) in values.iter().enumerate() {
            assert_eq!(master.open(v).unwrap(), vec![i as u8; 5]);
        }
    }
}
