//! The compact form of a record's strings: member id, account id and account name packed into one
//! heap block, with canonical UUIDs (the usual shape of Commerce ids) stored as their 16 bytes.
//!
//! Layout: three fields back to back, each a tag byte and its payload:
//! `0` absent (only the account name can be), `1` + 16 bytes of a UUID, `2` + LEB128 length +
//! UTF-8 bytes, `3` absent and the record is learned (a learned record never has an account name,
//! so its flag costs nothing). A UUID is stored as bytes only if it is in canonical form (lowercase,
//! hyphenated), so that decoding gives back exactly the string that was recorded; anything else
//! is kept as text. A typical record (two UUIDs, a short name) packs into ~50 bytes, one
//! allocation, instead of three `String`s (3 × 24 bytes inline plus three allocations).

use std::hash::{Hash, Hasher};

use uuid::Uuid;

const ABSENT: u8 = 0;
const UUID: u8 = 1;
const TEXT: u8 = 2;
/// In the name's place: no name, and the record was learned, not issued.
const LEARNED: u8 = 3;

/// Length of a canonical hyphenated UUID.
const UUID_LEN: usize = 36;

/// An id as compared and hashed: the 16 bytes of a canonical UUID, or the text of anything else.
/// Every string has exactly one form, so equality of forms is equality of strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum IdRef<'a> {
    Uuid([u8; 16]),
    Text(&'a str),
}

impl<'a> IdRef<'a> {
    /// The compact form of `id`.
    pub(super) fn parse(id: &'a str) -> Self {
        if id.len() == UUID_LEN {
            if let Ok(uuid) = Uuid::try_parse(id) {
                let mut canonical = [0u8; UUID_LEN];
                if uuid.hyphenated().encode_lower(&mut canonical).as_bytes() == id.as_bytes() {
                    return IdRef::Uuid(uuid.into_bytes());
                }
            }
        }
        IdRef::Text(id)
    }

    /// The string this form was parsed from.
    pub(super) fn to_string_exact(self) -> String {
        match self {
            IdRef::Uuid(bytes) => {
                // Straight into a buffer: the `Display` path costs several times as much.
                let mut buf = [0u8; UUID_LEN];
                Uuid::from_bytes(bytes)
                    .hyphenated()
                    .encode_lower(&mut buf)
                    .to_owned()
            }
            IdRef::Text(text) => text.to_owned(),
        }
    }

    /// An owned copy, for a map key.
    pub(super) fn to_owned_id(self) -> IdBuf {
        match self {
            IdRef::Uuid(bytes) => IdBuf::Uuid(bytes),
            IdRef::Text(text) => IdBuf::Text(text.into()),
        }
    }

    fn encode(self, out: &mut Vec<u8>) {
        match self {
            IdRef::Uuid(bytes) => {
                out.push(UUID);
                out.extend_from_slice(&bytes);
            }
            IdRef::Text(text) => encode_text(text, out),
        }
    }
}

/// An owned [`IdRef`]: 24 bytes, no allocation for a UUID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum IdBuf {
    Uuid([u8; 16]),
    Text(Box<str>),
}

impl IdBuf {
    pub(super) fn as_id(&self) -> IdRef<'_> {
        match self {
            IdBuf::Uuid(bytes) => IdRef::Uuid(*bytes),
            IdBuf::Text(text) => IdRef::Text(text),
        }
    }
}

impl Hash for IdBuf {
    /// Hashes as its [`IdRef`], so that either can be used to find the other.
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_id().hash(state);
    }
}

/// The strings of a record, borrowed from its packed block.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Fields<'a> {
    pub(super) member: IdRef<'a>,
    pub(super) account: IdRef<'a>,
    pub(super) name: Option<&'a str>,
    pub(super) learned: bool,
}

/// Packs a record's strings into one exactly sized block. A learned record's name is dropped (it
/// never has one: names come from the token endpoint's answer).
pub(super) fn encode(
    member: IdRef<'_>,
    account: IdRef<'_>,
    name: Option<&str>,
    learned: bool,
) -> Box<[u8]> {
    let text_len = |id: IdRef<'_>| match id {
        IdRef::Uuid(_) => 17,
        IdRef::Text(t) => t.len() + 6,
    };
    let mut out =
        Vec::with_capacity(text_len(member) + text_len(account) + name.map_or(1, |n| n.len() + 6));
    member.encode(&mut out);
    account.encode(&mut out);
    match name {
        _ if learned => out.push(LEARNED),
        Some(name) => encode_text(name, &mut out),
        None => out.push(ABSENT),
    }
    out.into_boxed_slice()
}

fn encode_text(text: &str, out: &mut Vec<u8>) {
    out.push(TEXT);
    let mut len = text.len();
    while len >= 0x80 {
        out.push((len as u8 & 0x7f) | 0x80);
        len >>= 7;
    }
    out.push(len as u8);
    out.extend_from_slice(text.as_bytes());
}

/// Unpacks a block written by [`encode`].
///
/// # Panics
///
/// On a block [`encode`] did not write: the store never holds one, so that is a broken invariant.
pub(super) fn decode(block: &[u8]) -> Fields<'_> {
    let mut rest = block;
    let member = decode_field(&mut rest);
    let account = decode_field(&mut rest);
    let learned = rest.first() == Some(&LEARNED);
    let name = if learned {
        None
    } else {
        decode_field(&mut rest)
    };
    match (member, account, name) {
        (Some(member), Some(account), None) => Fields {
            member,
            account,
            name: None,
            learned,
        },
        (Some(member), Some(account), Some(IdRef::Text(name))) => Fields {
            member,
            account,
            name: Some(name),
            learned,
        },
        _ => unreachable!("a record block holds two ids and an optional name"),
    }
}

/// Just the member id of a block (for index upkeep).
pub(super) fn member(block: &[u8]) -> IdRef<'_> {
    let mut rest = block;
    match decode_field(&mut rest) {
        Some(member) => member,
        None => unreachable!("a record block starts with its member id"),
    }
}

/// One field; `None` for [`ABSENT`].
fn decode_field<'a>(rest: &mut &'a [u8]) -> Option<IdRef<'a>> {
    let (&tag, tail) = rest.split_first()?;
    match tag {
        ABSENT => {
            *rest = tail;
            None
        }
        UUID => {
            let (bytes, tail) = tail.split_first_chunk::<16>()?;
            *rest = tail;
            Some(IdRef::Uuid(*bytes))
        }
        _ => {
            let mut len = 0usize;
            let mut shift = 0;
            let mut tail = tail;
            loop {
                let (&byte, after) = tail.split_first()?;
                tail = after;
                len |= usize::from(byte & 0x7f) << shift;
                shift += 7;
                if byte & 0x80 == 0 {
                    break;
                }
            }
            let (text, tail) = tail.split_at_checked(len)?;
            *rest = tail;
            std::str::from_utf8(text).ok().map(IdRef::Text)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_uuids_are_bytes_and_everything_round_trips() {
        let canonical = "0f8e7d6c-5b4a-4938-8271-605f4e3d2c1b";
        assert!(matches!(IdRef::parse(canonical), IdRef::Uuid(_)));
        for text in [
            canonical,
            "0F8E7D6C-5B4A-4938-8271-605F4E3D2C1B", // upper case: kept as text
            "0f8e7d6c5b4a49388271605f4e3d2c1b",     // simple form: kept as text
            "{0f8e7d6c-5b4a-4938-8271-605f4e3d2c1b}",
            "member-1",
            "",
            "é🦀",
        ] {
            let id = IdRef::parse(text);
            assert_eq!(id.to_string_exact(), text);
            assert_eq!(id.to_owned_id().as_id(), id);
            if text != canonical {
                assert_eq!(id, IdRef::Text(text));
            }
        }
    }

    #[test]
    fn blocks_round_trip_and_are_compact() {
        let long = "n".repeat(300); // a two-byte length
        let member = IdRef::parse("0f8e7d6c-5b4a-4938-8271-605f4e3d2c1b");
        for (account, name) in [
            ("1f8e7d6c-5b4a-4938-8271-605f4e3d2c1b", Some("Account 1")),
            ("acct-2", None),
            ("acct-3", Some("")),
            ("acct-4", Some(long.as_str())),
        ] {
            let account = IdRef::parse(account);
            let block = encode(member, account, name, false);
            assert_eq!(
                decode(&block),
                Fields {
                    member,
                    account,
                    name,
                    learned: false,
                }
            );
            assert_eq!(self::member(&block), member);
        }
        let learned = encode(member, IdRef::parse("acct-5"), Some("dropped"), true);
        assert_eq!(
            decode(&learned),
            Fields {
                member,
                account: IdRef::parse("acct-5"),
                name: None,
                learned: true,
            }
        );
        let typical = encode(
            member,
            IdRef::parse("1f8e7d6c-5b4a-4938-8271-605f4e3d2c1b"),
            Some("Account 123456"),
            false,
        );
        assert_eq!(typical.len(), 17 + 17 + 16);
    }
}
