//! Names of the specification enums as the command line and the file formats spell them:
//! `FromStr` and `Display` for each, and (with the `serde` feature) serialization through the
//! same strings, so a configuration file, a report and a command line read alike.
//!
//! | type | spellings |
//! |---|---|
//! | [`Scheme`] | `asymmetric`, `asymmetric-exact-zero`, `symmetric`, `symmetric-full` |
//! | [`MethodKind`](crate::MethodKind) | `uniform`, `ternary`, `binary`, `kmeans` |
//! | [`RangeEstimator`] | `minmax`, `percentile:P` (clip to the `100 − P` and `P` percentiles, `50 < P ≤ 100`), `percentile:L:U`, `mse` (100 candidates), `mse:N` |
//! | [`ParamDtype`] | `native` (or `f32`), `f16`, `bf16`, `qN` (two-level tables of `N`-bit codes, super-groups of 8), `qN:S` (super-groups of `S`) |
//! | [`TableDtype`] | `f32`, `f16` |
//! | [`TableFit`] | `cover`, `least-squares` (3 refits), `least-squares:N` |
//! | [`GranularityRule`] | `tensor`, `channel:AXIS`, `group:SIZE` (along the last axis) |

use core::fmt;
use core::str::FromStr;

use crate::error::{QuantError, Result};
use crate::lut::TableDtype;
use crate::spec::{Granularity, ParamDtype, RangeEstimator, Scheme, TableFit};

/// Default super-group of `qN` table names: GGML's k-quants use 8 slices per super-block scale.
pub const DEFAULT_SUPER_GROUP: u32 = 8;

/// Default candidates of `mse`.
const DEFAULT_MSE_STEPS: u16 = 100;

/// Default refits of `least-squares`.
const DEFAULT_LSQ_ITERATIONS: u8 = 3;

fn invalid(what: &'static str, input: &str, expected: &'static str) -> QuantError {
    QuantError::InvalidName { what, input: input.into(), expected }
}

impl Scheme {
    /// Every scheme, in the order the command line lists them.
    pub const ALL: [Scheme; 4] = [Scheme::AsymmetricGrid, Scheme::AsymmetricExactZero, Scheme::SymmetricNarrow, Scheme::SymmetricFull];

    /// The name the command line and the file formats use.
    pub const fn name(self) -> &'static str {
        match self {
            Scheme::AsymmetricGrid => "asymmetric",
            Scheme::AsymmetricExactZero => "asymmetric-exact-zero",
            Scheme::SymmetricNarrow => "symmetric",
            Scheme::SymmetricFull => "symmetric-full",
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Scheme {
    type Err = QuantError;
    fn from_str(s: &str) -> Result<Self> {
        Scheme::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| invalid("scheme", s, "asymmetric, asymmetric-exact-zero, symmetric or symmetric-full"))
    }
}

impl fmt::Display for RangeEstimator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            RangeEstimator::MinMax => f.write_str("minmax"),
            // The symmetric form is what the command line takes; exact in f64 for P in (50, 100].
            RangeEstimator::Percentile { lower, upper } if 100.0 - upper == lower => write!(f, "percentile:{upper}"),
            RangeEstimator::Percentile { lower, upper } => write!(f, "percentile:{lower}:{upper}"),
            RangeEstimator::Mse { steps: DEFAULT_MSE_STEPS } => f.write_str("mse"),
            RangeEstimator::Mse { steps } => write!(f, "mse:{steps}"),
        }
    }
}

impl FromStr for RangeEstimator {
    type Err = QuantError;
    fn from_str(s: &str) -> Result<Self> {
        const EXPECTED: &str = "minmax, percentile:P with P in (50, 100], percentile:LOWER:UPPER, mse or mse:N";
        let bad = || invalid("range estimator", s, EXPECTED);
        let number = |v: &str| v.parse::<f64>().map_err(|_| bad());
        let r = match s.split(':').collect::<Vec<_>>().as_slice() {
            ["minmax"] => RangeEstimator::MinMax,
            ["mse"] => RangeEstimator::Mse { steps: DEFAULT_MSE_STEPS },
            ["mse", n] => RangeEstimator::Mse { steps: n.parse().map_err(|_| bad())? },
            ["percentile", p] => {
                let p = number(p)?;
                // Written so that NaN is refused.
                if !(p > 50.0 && p <= 100.0) {
                    return Err(bad());
                }
                RangeEstimator::Percentile { lower: 100.0 - p, upper: p }
            }
            ["percentile", l, u] => RangeEstimator::Percentile { lower: number(l)?, upper: number(u)? },
            _ => return Err(bad()),
        };
        // The same validation a spec applies, so a parsed estimator is always usable.
        match r {
            RangeEstimator::Percentile { lower, upper } if !(lower >= 0.0 && lower < upper && upper <= 100.0) => Err(bad()),
            RangeEstimator::Mse { steps: 0 } => Err(bad()),
            r => Ok(r),
        }
    }
}

impl fmt::Display for ParamDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ParamDtype::Native => f.write_str("native"),
            ParamDtype::F16 => f.write_str("f16"),
            ParamDtype::Bf16 => f.write_str("bf16"),
            ParamDtype::Quantized { bits, super_group: DEFAULT_SUPER_GROUP } => write!(f, "q{bits}"),
            ParamDtype::Quantized { bits, super_group } => write!(f, "q{bits}:{super_group}"),
        }
    }
}

impl FromStr for ParamDtype {
    type Err = QuantError;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || invalid("table dtype", s, "f32 (or native), f16, bf16, or qN / qN:S with N in 2..=8 and S >= 1");
        Ok(match s {
            "native" | "f32" => ParamDtype::Native,
            "f16" => ParamDtype::F16,
            "bf16" => ParamDtype::Bf16,
            q => {
                let rest = q.strip_prefix('q').ok_or_else(bad)?;
                let (bits, super_group) = match rest.split_once(':') {
                    Some((b, g)) => (b, g.parse::<u32>().map_err(|_| bad())?),
                    None => (rest, DEFAULT_SUPER_GROUP),
                };
                match bits.parse::<u8>() {
                    Ok(bits @ 2..=8) if super_group >= 1 => ParamDtype::Quantized { bits, super_group },
                    _ => return Err(bad()),
                }
            }
        })
    }
}

impl fmt::Display for TableDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TableDtype::F32 => "f32",
            TableDtype::F16 => "f16",
        })
    }
}

impl FromStr for TableDtype {
    type Err = QuantError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(TableDtype::F32),
            "f16" => Ok(TableDtype::F16),
            _ => Err(invalid("codebook table dtype", s, "f32 or f16")),
        }
    }
}

impl fmt::Display for TableFit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TableFit::Cover => f.write_str("cover"),
            TableFit::LeastSquares { iterations } => write!(f, "least-squares:{iterations}"),
        }
    }
}

impl FromStr for TableFit {
    type Err = QuantError;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || invalid("table fit", s, "cover, least-squares or least-squares:N with N >= 1");
        match s.split_once(':') {
            None if s == "cover" => Ok(TableFit::Cover),
            None if s == "least-squares" => Ok(TableFit::LeastSquares { iterations: DEFAULT_LSQ_ITERATIONS }),
            Some(("least-squares", n)) => match n.parse::<u8>() {
                Ok(iterations @ 1..) => Ok(TableFit::LeastSquares { iterations }),
                _ => Err(bad()),
            },
            _ => Err(bad()),
        }
    }
}

/// A granularity chosen per tensor from its shape: what the command line's `--granularity`
/// names, so one setting serves a checkpoint whose tensors have different ranks.
///
/// Groups run along the **last** axis: the input dimension of a PyTorch `Linear` weight
/// (`out × in`), as GGML's blocks do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GranularityRule {
    /// One set of parameters for the whole tensor.
    Tensor,
    /// One set per index along `axis`.
    Channel {
        /// The axis.
        axis: usize,
    },
    /// Contiguous groups of `size` along the last axis (a ragged last group allowed).
    Group {
        /// Elements per group (at least 1).
        size: usize,
    },
}

impl GranularityRule {
    /// The granularity for a tensor of `shape`.
    ///
    /// # Errors
    /// [`QuantError::InvalidAxis`] when the tensor has no such channel axis, or (for groups)
    /// is a scalar; [`QuantError::InvalidGroupSize`] for a group size of zero.
    pub fn resolve(self, shape: &[usize]) -> Result<Granularity> {
        let ndim = shape.len();
        match self {
            GranularityRule::Tensor => Ok(Granularity::PerTensor),
            GranularityRule::Channel { axis } if axis < ndim => Ok(Granularity::PerChannel { axis }),
            GranularityRule::Channel { axis } => Err(QuantError::InvalidAxis { axis, ndim }),
            GranularityRule::Group { size: 0 } => Err(QuantError::InvalidGroupSize { size: 0 }),
            GranularityRule::Group { size } if ndim > 0 => Ok(Granularity::PerGroup { axis: ndim - 1, size }),
            GranularityRule::Group { .. } => Err(QuantError::InvalidAxis { axis: 0, ndim }),
        }
    }
}

impl fmt::Display for GranularityRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GranularityRule::Tensor => f.write_str("tensor"),
            GranularityRule::Channel { axis } => write!(f, "channel:{axis}"),
            GranularityRule::Group { size } => write!(f, "group:{size}"),
        }
    }
}

impl FromStr for GranularityRule {
    type Err = QuantError;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || invalid("granularity", s, "tensor, channel:AXIS or group:SIZE with SIZE >= 1");
        let number = |v: &str| v.parse::<usize>().map_err(|_| bad());
        match s.split_once(':') {
            None if s == "tensor" => Ok(GranularityRule::Tensor),
            Some(("channel", a)) => Ok(GranularityRule::Channel { axis: number(a)? }),
            Some(("group", g)) => match number(g)? {
                0 => Err(bad()),
                size => Ok(GranularityRule::Group { size }),
            },
            _ => Err(bad()),
        }
    }
}

/// Serializes the named types as their names and parses them back (so invalid names are
/// refused while deserializing).
#[cfg(feature = "serde")]
mod serde_impls {
    use super::*;
    use crate::method::MethodKind;

    macro_rules! serde_via_str {
        ($($t:ty),* $(,)?) => {$(
            impl serde::Serialize for $t {
                fn serialize<S: serde::Serializer>(&self, s: S) -> core::result::Result<S::Ok, S::Error> {
                    s.collect_str(self)
                }
            }
            impl<'de> serde::Deserialize<'de> for $t {
                fn deserialize<D: serde::Deserializer<'de>>(d: D) -> core::result::Result<Self, D::Error> {
                    let s = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
                    s.parse().map_err(serde::de::Error::custom)
                }
            }
        )*};
    }

    serde_via_str!(Scheme, MethodKind, RangeEstimator, ParamDtype, TableDtype, TableFit, GranularityRule);
}
