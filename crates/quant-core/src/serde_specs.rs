//! Serde forms of the validated specs: plain field structs that deserialize with every field
//! optional (the spec's default) and convert through the spec's builder, so a deserialized
//! spec is always a checked one.

use serde::{Deserialize, Serialize};

use crate::error::QuantError;
use crate::kmeans::{KMeansAlgorithm, KMeansInit, KMeansSpec};
use crate::lut::TableDtype;
use crate::spec::{Granularity, ParamDtype, RangeEstimator, Rounding, ScaleMode, Scheme, TableFit, UniformSpec};
use crate::ternary::TernarySpec;

#[derive(Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct UniformFields {
    bits: u8,
    scheme: Scheme,
    granularity: Granularity,
    range: RangeEstimator,
    rounding: Rounding,
    scale_mode: ScaleMode,
    param_dtype: ParamDtype,
    table_fit: TableFit,
}

impl Default for UniformFields {
    fn default() -> Self {
        UniformSpec::default().into()
    }
}

impl From<UniformSpec> for UniformFields {
    fn from(s: UniformSpec) -> Self {
        Self {
            bits: s.bits(),
            scheme: s.scheme(),
            granularity: s.granularity(),
            range: s.range(),
            rounding: s.rounding(),
            scale_mode: s.scale_mode(),
            param_dtype: s.param_dtype(),
            table_fit: s.table_fit(),
        }
    }
}

impl TryFrom<UniformFields> for UniformSpec {
    type Error = QuantError;
    fn try_from(f: UniformFields) -> Result<Self, QuantError> {
        UniformSpec::builder()
            .bits(f.bits)
            .scheme(f.scheme)
            .granularity(f.granularity)
            .range(f.range)
            .rounding(f.rounding)
            .scale_mode(f.scale_mode)
            .param_dtype(f.param_dtype)
            .table_fit(f.table_fit)
            .check()
    }
}

#[derive(Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct KMeansFields {
    k: usize,
    granularity: Granularity,
    init: KMeansInit,
    algorithm: KMeansAlgorithm,
    table: TableDtype,
}

impl Default for KMeansFields {
    fn default() -> Self {
        KMeansSpec::default().into()
    }
}

impl From<KMeansSpec> for KMeansFields {
    fn from(s: KMeansSpec) -> Self {
        Self { k: s.k(), granularity: s.granularity(), init: s.init(), algorithm: s.algorithm(), table: s.table() }
    }
}

impl TryFrom<KMeansFields> for KMeansSpec {
    type Error = QuantError;
    fn try_from(f: KMeansFields) -> Result<Self, QuantError> {
        KMeansSpec::builder().k(f.k).granularity(f.granularity).init(f.init).algorithm(f.algorithm).table(f.table).check()
    }
}

#[derive(Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct TernaryFields {
    granularity: Granularity,
    threshold: f64,
    clip: Option<f64>,
}

impl Default for TernaryFields {
    fn default() -> Self {
        TernarySpec::default().into()
    }
}

impl From<TernarySpec> for TernaryFields {
    fn from(s: TernarySpec) -> Self {
        Self { granularity: s.granularity(), threshold: s.threshold(), clip: s.clip() }
    }
}

impl TryFrom<TernaryFields> for TernarySpec {
    type Error = QuantError;
    fn try_from(f: TernaryFields) -> Result<Self, QuantError> {
        let b = TernarySpec::builder().granularity(f.granularity).threshold(f.threshold);
        match f.clip {
            Some(c) => b.clip(c).check(),
            None => b.check(),
        }
    }
}
