//! HPACK's Huffman code (RFC 7541 Appendix B), decoding only. The code is canonical: each
//! symbol's code follows from the code lengths alone (shorter codes first, then by symbol), so
//! only the 257 lengths are written down here and the decoding tables are built at compile time.

/// Code length in bits of each symbol 0..=255 and EOS (256), from RFC 7541 Appendix B.
const LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28,
    28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12,
    10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6,
    5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22,
    22, 23, 22, 23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22, 21, 20,
    22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23,
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28,
    27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28,
    27, 27, 27, 27, 27, 26, 30,
];

const MAX_LEN: usize = 30;

struct Table {
    /// Symbols ordered by (code length, symbol): the canonical order.
    sorted: [u16; 257],
    /// Per code length: first code of that length, and the index in `sorted` of its symbol.
    first_code: [u32; MAX_LEN + 1],
    first_index: [u16; MAX_LEN + 1],
    count: [u16; MAX_LEN + 1],
}

const fn build() -> Table {
    let mut t = Table {
        sorted: [0; 257],
        first_code: [0; MAX_LEN + 1],
        first_index: [0; MAX_LEN + 1],
        count: [0; MAX_LEN + 1],
    };
    let mut n = 0;
    let mut len = 1;
    let mut code: u32 = 0;
    while len <= MAX_LEN {
        t.first_code[len] = code;
        t.first_index[len] = n as u16;
        let mut sym = 0;
        while sym < 257 {
            if LENGTHS[sym] as usize == len {
                t.sorted[n] = sym as u16;
                n += 1;
                t.count[len] += 1;
                code += 1;
            }
            sym += 1;
        }
        code <<= 1;
        len += 1;
    }
    t
}

static TABLE: Table = build();

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HuffmanError {
    /// The EOS symbol inside a string, a code that does not exist, or padding that is longer
    /// than 7 bits or not all ones.
    Invalid,
}

/// Decodes `src`, keeping at most `cap` decoded bytes in `out` (when given). Returns the full
/// decoded length, which the dynamic table's size accounting needs even for values never kept.
pub fn decode(src: &[u8], mut out: Option<&mut Vec<u8>>, cap: usize) -> Result<usize, HuffmanError> {
    let mut code: u32 = 0;
    let mut len = 0usize;
    let mut decoded = 0usize;
    for &byte in src {
        for shift in (0..8).rev() {
            code = (code << 1) | u32::from((byte >> shift) & 1);
            len += 1;
            let t = &TABLE;
            let offset = code.wrapping_sub(t.first_code[len]);
            if t.count[len] > 0 && code >= t.first_code[len] && offset < u32::from(t.count[len]) {
                let sym = t.sorted[usize::from(t.first_index[len]) + offset as usize];
                if sym == 256 {
                    return Err(HuffmanError::Invalid);
                }
                if let Some(o) = out.as_deref_mut() {
                    if o.len() < cap {
                        o.push(sym as u8);
                    }
                }
                decoded += 1;
                code = 0;
                len = 0;
            } else if len >= MAX_LEN {
                return Err(HuffmanError::Invalid);
            }
        }
    }
    // Padding: fewer than 8 bits, all ones (the most significant bits of EOS).
    if len > 7 || code != (1u32 << len) - 1 {
        return Err(HuffmanError::Invalid);
    }
    Ok(decoded)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    fn text(src: &[u8]) -> String {
        let mut out = Vec::new();
        let n = decode(src, Some(&mut out), usize::MAX).unwrap();
        assert_eq!(n, out.len());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn decodes_the_rfc_7541_examples() {
        // RFC 7541 C.4 and C.6.
        assert_eq!(text(&hex("f1e3c2e5f23a6ba0ab90f4ff")), "www.example.com");
        assert_eq!(text(&hex("a8eb10649cbf")), "no-cache");
        assert_eq!(text(&hex("25a849e95ba97d7f")), "custom-key");
        assert_eq!(text(&hex("25a849e95bb8e8b4bf")), "custom-value");
        assert_eq!(text(&hex("6402")), "302");
        assert_eq!(text(&hex("aec3771a4b")), "private");
        assert_eq!(text(&hex("d07abe941054d444a8200595040b8166e082a62d1bff")), "Mon, 21 Oct 2013 20:13:21 GMT");
        assert_eq!(text(&hex("9d29ad171863c78f0b97c8e9ae82ae43d3")), "https://www.example.com");
        assert_eq!(text(&[]), "");
    }

    #[test]
    fn counts_without_keeping_and_caps_what_it_keeps() {
        let src = hex("f1e3c2e5f23a6ba0ab90f4ff");
        assert_eq!(decode(&src, None, 0), Ok(15));
        let mut out = Vec::new();
        assert_eq!(decode(&src, Some(&mut out), 3), Ok(15));
        assert_eq!(out, b"www");
    }

    #[test]
    fn rejects_bad_padding_and_eos() {
        // "0" is 00000 (5 bits): padding with zeros is invalid, with ones valid.
        assert_eq!(decode(&[0b0000_0111], None, 0), Ok(1));
        assert_eq!(decode(&[0b0000_0000], None, 0), Err(HuffmanError::Invalid));
        // A whole byte of ones is padding longer than 7 bits.
        assert_eq!(decode(&[0b0000_0111, 0xff], None, 0), Err(HuffmanError::Invalid));
        // EOS is 30 ones.
        assert_eq!(decode(&[0xff, 0xff, 0xff, 0xff], None, 0), Err(HuffmanError::Invalid));
    }
}
