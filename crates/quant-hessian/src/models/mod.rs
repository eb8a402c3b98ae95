//! Reference differentiable models: a quadratic with a known Hessian, softmax regression,
//! a multilayer perceptron and a small BERT-style encoder, with gradients written generic over [`Real`](crate::Real) so
//! their Hessian-vector products are exact.

mod common;
mod encoder;
mod mlp;
mod quadratic;

pub use encoder::{Encoder, EncoderConfig};
pub use mlp::{Activation, Mlp};
pub use quadratic::Quadratic;
