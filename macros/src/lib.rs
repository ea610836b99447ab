//! The `#[pool_job]` attribute of [procpool](https://docs.rs/procpool).
//!
//! Use it through `procpool::pool_job`; this crate is an implementation
//! detail. The attribute works in three steps, each in its own module:
//! [`parse`] reads the attribute's options, [`validate`] checks the function
//! and reports misuse on the user's own span, [`expand`] writes the code.

use proc_macro::TokenStream;

mod expand;
mod parse;
mod validate;

/// Registers a function as a procpool job. See `procpool::pool_job`.
#[proc_macro_attribute]
pub fn pool_job(args: TokenStream, input: TokenStream) -> TokenStream {
    match pool_job_impl(args.into(), input.into()) {
        Ok(tokens) => tokens.into(),
        Err(error) => error.to_compile_error().into(),
    }
}

fn pool_job_impl(
    args: proc_macro2::TokenStream,
    input: proc_macro2::TokenStream,
) -> syn::Result<proc_macro2::TokenStream> {
    let options = parse::options(args)?;
    let function = parse::function(input)?;
    let job = validate::job(function)?;
    Ok(expand::job(&options, &job))
}
