//! The ggml tensor types: id, name and block layout, as in ggml's `ggml_type` enum and
//! its `type_traits` table (`ggml/src/ggml.c`). Ids that ggml removed are absent.

/// The storage layout of one ggml tensor type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GgmlType {
    /// The id in the GGUF tensor info.
    pub id: u32,
    /// The name ggml prints, e.g. "Q4_1".
    pub name: &'static str,
    /// Elements per block.
    pub block_len: u64,
    /// Bytes per block.
    pub block_bytes: u64,
}

const fn t(id: u32, name: &'static str, block_len: u64, block_bytes: u64) -> GgmlType {
    GgmlType {
        id,
        name,
        block_len,
        block_bytes,
    }
}

/// Block sizes: super-blocks of 256 (QK_K) for k- and i-quants, 32 for the legacy quants.
const TYPES: &[GgmlType] = &[
    t(0, "F32", 1, 4),
    t(1, "F16", 1, 2),
    t(2, "Q4_0", 32, 18),
    t(3, "Q4_1", 32, 20),
    t(6, "Q5_0", 32, 22),
    t(7, "Q5_1", 32, 24),
    t(8, "Q8_0", 32, 34),
    t(9, "Q8_1", 32, 36),
    t(10, "Q2_K", 256, 84),
    t(11, "Q3_K", 256, 110),
    t(12, "Q4_K", 256, 144),
    t(13, "Q5_K", 256, 176),
    t(14, "Q6_K", 256, 210),
    t(15, "Q8_K", 256, 292),
    t(16, "IQ2_XXS", 256, 66),
    t(17, "IQ2_XS", 256, 74),
    t(18, "IQ3_XXS", 256, 98),
    t(19, "IQ1_S", 256, 50),
    t(20, "IQ4_NL", 32, 18),
    t(21, "IQ3_S", 256, 110),
    t(22, "IQ2_S", 256, 82),
    t(23, "IQ4_XS", 256, 136),
    t(24, "I8", 1, 1),
    t(25, "I16", 1, 2),
    t(26, "I32", 1, 4),
    t(27, "I64", 1, 8),
    t(28, "F64", 1, 8),
    t(29, "IQ1_M", 256, 56),
    t(30, "BF16", 1, 2),
    t(34, "TQ1_0", 256, 54),
    t(35, "TQ2_0", 256, 66),
    t(39, "MXFP4", 32, 17),
];

/// The layout of the type with this id, if ggml defines it.
pub(crate) fn lookup(id: u32) -> Option<GgmlType> {
    TYPES.iter().copied().find(|ty| ty.id == id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_blocks_nonempty() {
        for (i, a) in TYPES.iter().enumerate() {
            assert!(a.block_len > 0 && a.block_bytes > 0, "{}", a.name);
            assert!(
                TYPES[i + 1..]
                    .iter()
                    .all(|b| b.id != a.id && b.name != a.name),
                "{}",
                a.name
            );
        }
    }

    #[test]
    fn removed_ids_are_unknown() {
        // Q4_2 and Q4_3 (4, 5) were dropped from ggml; a file using them is not readable.
        assert_eq!(lookup(4), None);
        assert_eq!(lookup(3).map(|ty| ty.name), Some("Q4_1"));
    }
}
