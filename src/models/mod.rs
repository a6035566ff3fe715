//! Network definitions as candle modules, one file per architecture, each reading like
//! its paper. Loading, labels and preprocessing live elsewhere ([`crate::classifier`]).

pub mod efficientnet_lite;
pub mod layers;
pub mod resnet;
pub mod small_cnn;
