//! GGML's tensor types: their ids in a GGUF file, block sizes and bytes per block.

use crate::error::{GgufError, Result};

macro_rules! ggml_types {
    ($($(#[$m:meta])* $v:ident = $id:literal, $name:literal, $block:literal, $bytes:literal;)*) => {
        /// A GGML tensor type, as GGUF files name them by id (ggml's `enum ggml_type`).
        ///
        /// Every type ggml defines is listed, so any file's tensors can be sized and copied;
        /// [`crate::codec`] encodes and decodes the types it says.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[allow(non_camel_case_types)]
        #[non_exhaustive]
        pub enum GgmlType {
            $($(#[$m])* $v,)*
        }

        impl GgmlType {
            /// Every type, by id.
            pub const ALL: &[GgmlType] = &[$(GgmlType::$v,)*];

            /// The type with this id.
            ///
            /// # Errors
            /// [`GgufError::UnknownType`] for an id ggml does not define.
            pub fn from_id(id: u32) -> Result<Self> {
                match id {
                    $($id => Ok(GgmlType::$v),)*
                    _ => Err(GgufError::UnknownType(id)),
                }
            }

            /// The id stored in a GGUF file.
            pub fn id(self) -> u32 {
                match self { $(GgmlType::$v => $id,)* }
            }

            /// ggml's name of the type (`"q4_K"`, `"f16"`, …).
            pub fn name(self) -> &'static str {
                match self { $(GgmlType::$v => $name,)* }
            }

            /// Elements per block (1 for the plain number types).
            pub fn block_size(self) -> usize {
                match self { $(GgmlType::$v => $block,)* }
            }

            /// Bytes per block.
            pub fn block_bytes(self) -> usize {
                match self { $(GgmlType::$v => $bytes,)* }
            }
        }
    };
}

ggml_types! {
    /// 32-bit float.
    F32 = 0, "f32", 1, 4;
    /// IEEE half precision.
    F16 = 1, "f16", 1, 2;
    /// 32 values: an f16 scale and 4-bit codes, `d·(q − 8)`.
    Q4_0 = 2, "q4_0", 32, 18;
    /// 32 values: f16 scale and minimum and 4-bit codes, `d·q + m`.
    Q4_1 = 3, "q4_1", 32, 20;
    /// 32 values: an f16 scale and 5-bit codes, `d·(q − 16)`.
    Q5_0 = 6, "q5_0", 32, 22;
    /// 32 values: f16 scale and minimum and 5-bit codes, `d·q + m`.
    Q5_1 = 7, "q5_1", 32, 24;
    /// 32 values: an f16 scale and 8-bit signed codes, `d·q`.
    Q8_0 = 8, "q8_0", 32, 34;
    /// 32 values: f16 scale and sum and 8-bit codes (activations only).
    Q8_1 = 9, "q8_1", 32, 40;
    /// 256 values: 2-bit codes, 4-bit scales and minimums of 16 sub-blocks, f16 super-scales.
    Q2_K = 10, "q2_K", 256, 84;
    /// 256 values: 3-bit codes, 6-bit scales of 16 sub-blocks, an f16 super-scale.
    Q3_K = 11, "q3_K", 256, 110;
    /// 256 values: 4-bit codes, 6-bit scales and minimums of 8 sub-blocks, f16 super-scales.
    Q4_K = 12, "q4_K", 256, 144;
    /// 256 values: 5-bit codes, 6-bit scales and minimums of 8 sub-blocks, f16 super-scales.
    Q5_K = 13, "q5_K", 256, 176;
    /// 256 values: 6-bit codes, 8-bit scales of 16 sub-blocks, an f16 super-scale.
    Q6_K = 14, "q6_K", 256, 210;
    /// 256 values: 8-bit codes, f32 scale, block sums (activations only).
    Q8_K = 15, "q8_K", 256, 292;
    /// i-quant, 2.06 bits per weight.
    IQ2_XXS = 16, "iq2_xxs", 256, 66;
    /// i-quant, 2.31 bits per weight.
    IQ2_XS = 17, "iq2_xs", 256, 74;
    /// i-quant, 3.06 bits per weight.
    IQ3_XXS = 18, "iq3_xxs", 256, 98;
    /// i-quant, 1.56 bits per weight.
    IQ1_S = 19, "iq1_s", 256, 50;
    /// i-quant, 4 bits, non-linear table.
    IQ4_NL = 20, "iq4_nl", 32, 18;
    /// i-quant, 3.44 bits per weight.
    IQ3_S = 21, "iq3_s", 256, 110;
    /// i-quant, 2.5 bits per weight.
    IQ2_S = 22, "iq2_s", 256, 82;
    /// i-quant, 4.25 bits per weight.
    IQ4_XS = 23, "iq4_xs", 256, 136;
    /// 8-bit integer.
    I8 = 24, "i8", 1, 1;
    /// 16-bit integer.
    I16 = 25, "i16", 1, 2;
    /// 32-bit integer.
    I32 = 26, "i32", 1, 4;
    /// 64-bit integer.
    I64 = 27, "i64", 1, 8;
    /// 64-bit float.
    F64 = 28, "f64", 1, 8;
    /// i-quant, 1.75 bits per weight.
    IQ1_M = 29, "iq1_m", 256, 56;
    /// bfloat16.
    BF16 = 30, "bf16", 1, 2;
    /// Ternary, 1.69 bits per weight.
    TQ1_0 = 34, "tq1_0", 256, 54;
    /// Ternary, 2.06 bits per weight.
    TQ2_0 = 35, "tq2_0", 256, 66;
    /// Microscaling FP4.
    MXFP4 = 39, "mxfp4", 32, 17;
}

impl GgmlType {
    /// The bytes of a tensor of `elements` values in rows of `row` values: `None` when a row is
    /// not a whole number of blocks or the size overflows.
    pub fn bytes_for(self, row: u64, elements: u64) -> Option<u64> {
        let block = self.block_size() as u64;
        if !row.is_multiple_of(block) || !elements.is_multiple_of(block) {
            return None;
        }
        (elements / block).checked_mul(self.block_bytes() as u64)
    }

    /// The type llama.cpp's quantizer stores a tensor with rows of `row` values in when this
    /// type was asked for (`tensor_type_fallback` in `llama-quant.cpp`): this type when a row
    /// is a whole number of its blocks; otherwise q2_K and q3_K fall back to q4_0, q4_K to
    /// q5_0, q5_K to q5_1, q6_K to q8_0, and where even that does not fit, f16.
    pub fn fallback_for_row(self, row: u64) -> Self {
        if row.is_multiple_of(self.block_size() as u64) {
            return self;
        }
        let next = match self {
            GgmlType::Q2_K | GgmlType::Q3_K | GgmlType::TQ1_0 | GgmlType::TQ2_0 => GgmlType::Q4_0,
            GgmlType::Q4_K => GgmlType::Q5_0,
            GgmlType::Q5_K => GgmlType::Q5_1,
            GgmlType::Q6_K => GgmlType::Q8_0,
            GgmlType::IQ1_S
            | GgmlType::IQ1_M
            | GgmlType::IQ2_XXS
            | GgmlType::IQ2_XS
            | GgmlType::IQ2_S
            | GgmlType::IQ3_XXS
            | GgmlType::IQ3_S
            | GgmlType::IQ4_XS => GgmlType::IQ4_NL,
            _ => GgmlType::F16,
        };
        if row.is_multiple_of(next.block_size() as u64) { next } else { GgmlType::F16 }
    }

    /// The type named `name` (ggml's names, any case: `q4_k`, `Q8_0`, `bf16`).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|t| t.name().eq_ignore_ascii_case(name))
    }
}

impl core::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}
