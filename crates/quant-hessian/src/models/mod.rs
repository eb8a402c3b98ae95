//! Reference differentiable models: a quadratic with a known Hessian, softmax regression and
//! a multilayer perceptron, with gradients written generic over [`Real`](crate::Real) so
//! their Hessian-vector products are exact.

mod mlp;
mod quadratic;

pub use mlp::{Activation, Mlp};
pub use quadratic::Quadratic;
