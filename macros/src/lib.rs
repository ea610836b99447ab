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
    pool_job_impl(args.into(), input.into()).into()
}

fn pool_job_impl(
    args: proc_macro2::TokenStream,
    input: proc_macro2::TokenStream,
) -> proc_macro2::TokenStream {
    // On an error about the item's kind (a struct, a const...), the item is
    // written back unchanged next to the message, so code that uses it does
    // not fail a second time with "cannot find ...". A function the
    // attribute rejects becomes `expand::rejected`'s constant instead.
    let with_item = |error: syn::Error, input: proc_macro2::TokenStream| {
        let mut tokens = error.to_compile_error();
        tokens.extend(input);
        tokens
    };
    let function = match parse::function(input.clone()) {
        Ok(function) => function,
        Err(error) => return with_item(error, input),
    };
    let options = parse::options(args);
    let job = validate::job(function.clone());
    match (options, job) {
        (Ok(options), Ok(job)) => expand::job(&options, &job),
        (options, job) => {
            let mut errors = options.err().into_iter().chain(job.err());
            let mut error = errors.next().expect("one of the two failed");
            error.extend(errors);
            expand::rejected(&function, error)
        }
    }
}

#[cfg(test)]
mod tests {
    use quote::quote;

    #[test]
    fn error_keeps_the_item() {
        let out = super::pool_job_impl(
            quote!(retries = 3),
            quote!(
                fn f(x: u8) -> u8 {
                    x
                }
            ),
        )
        .to_string();
        assert!(out.contains("compile_error"), "{out}");
        assert!(out.contains("fn f (x : u8) -> u8"), "{out}");
        assert!(!out.contains("Job"), "{out}");
    }

    #[test]
    fn option_and_signature_errors_are_reported_together() {
        let out = super::pool_job_impl(
            quote!(retries = 3),
            quote!(
                async fn f(x: &str) {}
            ),
        )
        .to_string();
        assert_eq!(out.matches("compile_error").count(), 3, "{out}");
    }

    #[test]
    fn rejected_function_becomes_a_constant_of_an_erroneous_type() {
        // The compiler reports nothing more about uses of such a constant,
        // so `pool.map(f, ..)` and `f(..)` add no second error.
        let out = super::pool_job_impl(
            quote!(),
            quote!(
                pub fn largest<T: PartialOrd>(items: Vec<T>) -> Option<T> {
                    None
                }
            ),
        )
        .to_string();
        assert!(
            out.starts_with("# [allow (non_upper_case_globals)] pub const largest : [() ; :: core :: compile_error !"),
            "{out}"
        );
        assert_eq!(out.matches("compile_error").count(), 1, "{out}");
        // The body is still type-checked, inside the initializer.
        assert!(out.contains("fn largest < T : PartialOrd >"), "{out}");
    }

    #[test]
    fn struct_is_kept() {
        let out = super::pool_job_impl(
            quote!(),
            quote!(
                struct S;
            ),
        )
        .to_string();
        assert!(out.contains("not on a struct"), "{out}");
        assert!(out.ends_with("struct S ;"), "{out}");
    }

    #[test]
    fn variadic_function_is_not_kept() {
        let out = super::pool_job_impl(
            quote!(),
            quote!(
                unsafe extern "C" fn f(x: i32, ...) {}
            ),
        )
        .to_string();
        assert!(out.contains("variadic"), "{out}");
        assert!(!out.contains("fn f"), "{out}");
    }
}
