//! Step 3: write the code.
//!
//! `fn square(x: u64) -> u64 { .. }` becomes a constant
//! `square: Job<fn(u64) -> u64, (u64,), u64>` that derefs to the original
//! function (so `square(3)` still works) and points at a registry entry (so
//! the linker keeps the entry wherever the job is used). Inside the
//! constant's initializer:
//! - the original function, renamed `__procpool_job_square`. Keeping it in
//!   there makes the expansion one item, valid wherever the function was,
//!   also as an associated function in an `impl` block;
//! - one type check per distinct argument and result type, spanned on the
//!   user's type so a missing `Serialize` is reported there, once;
//! - the registry entry and the worker-side trampoline.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Attribute, Type};

use crate::parse::Options;
use crate::validate::Job;

pub(crate) fn job(options: &Options, job: &Job) -> TokenStream {
    let krate = match &options.krate {
        Some(path) => quote!(#path),
        None => quote!(::procpool),
    };
    let function = &job.function;
    let ident = &function.sig.ident;
    let vis = &function.vis;
    let hidden = format_ident!("__procpool_job_{}", ident, span = ident.span());

    let mut renamed = function.clone();
    renamed.sig.ident = hidden.clone();
    renamed.vis = syn::Visibility::Inherited;
    // Deprecation is for the name users call; on the hidden function it
    // would warn about the constant's own initializer.
    renamed
        .attrs
        .retain(|attr| !attr.path().is_ident("deprecated"));

    let const_attrs: Vec<&Attribute> = function
        .attrs
        .iter()
        .filter(|a| belongs_on_const(a))
        .collect();
    let args = &job.args;
    let output = &job.output;
    let fn_type = quote!(fn(#(#args),*) -> #output);
    let tuple = quote!((#(#args,)*));

    let name = match &options.name {
        Some(name) => quote!(#name),
        None => quote!(::core::concat!(
            ::core::module_path!(),
            "::",
            ::core::stringify!(#ident)
        )),
    };

    let vars: Vec<_> = (0..args.len())
        .map(|i| format_ident!("__arg{}", i))
        .collect();
    let trampoline = match args.len() {
        0 => quote!(|(): ()| #hidden()),
        1 => {
            let ty = &args[0];
            quote!(|__arg0: #ty| #hidden(__arg0))
        }
        _ => quote!(|(#(#vars,)*): #tuple| #hidden(#(#vars),*)),
    };

    // The item type a call of the job consumes: the bare argument for one
    // argument, the tuple otherwise (as `JobArgs::Item`).
    let item = match args.as_slice() {
        [single] => quote!(#single),
        _ => tuple.clone(),
    };

    let checks = distinct(args.iter().chain(std::iter::once(output))).map(|ty| {
        // Spanned on the user's type: that is where a missing `Serialize`
        // is reported, with the message of `__private`'s marker traits.
        quote_spanned! {ty.span()=>
            let __verdict = (&&&&&#krate::__private::Probe::<#ty>::new()).verdict();
            #krate::__private::require::<#ty, _>(__verdict);
        }
    });

    quote! {
        #(#const_attrs)*
        #[allow(non_upper_case_globals)]
        #vis const #ident: #krate::Job<#fn_type, #tuple, #output> = {
            #[allow(non_snake_case)]
            #renamed

            // Type-checked, never called: one error per type that cannot
            // cross the process boundary, on that type.
            #[allow(dead_code)]
            fn __procpool_check_types() {
                #[allow(unused_imports)]
                use #krate::__private::{
                    ViaNoDeserialize as _, ViaNoSerde as _, ViaNoSerialize as _, ViaNotSend as _,
                    ViaTransferable as _,
                };
                #(#checks)*
            }

            #[#krate::__private::linkme::distributed_slice(#krate::__private::JOBS)]
            #[linkme(crate = #krate::__private::linkme)]
            static __PROCPOOL_ENTRY: #krate::__private::JobEntry = #krate::__private::JobEntry {
                name: #name,
                function: ::core::concat!(::core::module_path!(), "::", ::core::stringify!(#ident)),
                signature: ::core::stringify!(#fn_type),
                invoke: |count, input, output| {
                    #[allow(unused_imports)]
                    use #krate::__private::{NeverRun as _, Run as _};
                    // Resolves to a stub when a type is not transferable, so
                    // the only error is the one `__procpool_check_types` reports.
                    (&&#krate::__private::Probe::<(#item, #output)>::new())
                        .run(count, input, output, #trampoline)
                },
            };

            #krate::Job::__new(#hidden as #fn_type, &__PROCPOOL_ENTRY)
        };
    }
}

/// Each type once, in order: a type used twice gets one error, not two.
fn distinct<'a>(types: impl Iterator<Item = &'a Type>) -> impl Iterator<Item = &'a Type> {
    let mut seen = std::collections::HashSet::new();
    types.filter(move |ty| seen.insert(quote!(#ty).to_string()))
}

/// Attributes that describe the job as users see it: docs, conditional
/// compilation, deprecation and lint levels go on the constant as well as on
/// the function; everything else (`#[inline]`, ...) stays on the function only.
fn belongs_on_const(attr: &Attribute) -> bool {
    [
        "doc",
        "cfg",
        "cfg_attr",
        "deprecated",
        "allow",
        "warn",
        "deny",
        "expect",
        "forbid",
    ]
    .iter()
    .any(|name| attr.path().is_ident(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand(options: proc_macro2::TokenStream, function: proc_macro2::TokenStream) -> String {
        let options = crate::parse::options(options).unwrap();
        let job =
            crate::validate::job(syn::parse2(function).unwrap()).unwrap_or_else(|e| panic!("{e}"));
        job_tokens(&options, &job)
    }

    fn job_tokens(options: &Options, job: &Job) -> String {
        super::job(options, job).to_string()
    }

    #[test]
    fn constant_keeps_name_visibility_and_docs() {
        let out = expand(
            quote!(),
            quote!(
                #[doc = " Squares."]
                #[inline]
                pub fn square(x: u64) -> u64 {
                    x * x
                }
            ),
        );
        assert!(
            out.contains(
                "pub const square : :: procpool :: Job < fn (u64) -> u64 , (u64 ,) , u64 >"
            ),
            "{out}"
        );
        assert!(
            out.contains("fn __procpool_job_square (x : u64) -> u64"),
            "{out}"
        );
        // The doc comment is on both items, #[inline] only on the function.
        assert_eq!(out.matches("Squares.").count(), 2, "{out}");
        assert_eq!(out.matches("inline").count(), 1, "{out}");
    }

    #[test]
    fn name_option_replaces_module_path() {
        let out = expand(
            quote!(name = "jobs.sq"),
            quote!(
                fn square(x: u64) -> u64 {
                    x
                }
            ),
        );
        assert!(out.contains("name : \"jobs.sq\""), "{out}");
    }

    #[test]
    fn crate_option_changes_every_path() {
        let out = expand(
            quote!(crate = "procpool2"),
            quote!(
                fn f() {}
            ),
        );
        assert!(!out.contains(":: procpool ::"), "{out}");
        assert!(out.contains("procpool2 :: Job"), "{out}");
    }

    #[test]
    fn zero_and_many_arguments_use_tuples() {
        let zero = expand(
            quote!(),
            quote!(
                fn f() {}
            ),
        );
        assert!(zero.contains("Job < fn () -> () , () , () >"), "{zero}");
        let two = expand(
            quote!(),
            quote!(
                fn add(a: i64, b: i64) -> i64 {
                    a + b
                }
            ),
        );
        assert!(
            two.contains(
                "| (__arg0 , __arg1 ,) : (i64 , i64 ,) | __procpool_job_add (__arg0 , __arg1)"
            ),
            "{two}"
        );
    }

    #[test]
    fn everything_is_one_constant() {
        // The renamed function lives inside the constant's initializer, so
        // the expansion is a single item, valid in a module or an impl block.
        let out = expand(
            quote!(),
            quote!(
                fn square(x: u64) -> u64 {
                    x * x
                }
            ),
        );
        let tokens: TokenStream = out.parse().unwrap();
        let items: Vec<syn::Item> = syn::parse2::<syn::File>(tokens).unwrap().items;
        assert_eq!(items.len(), 1, "{out}");
        assert!(matches!(items[0], syn::Item::Const(_)), "{out}");
    }

    #[test]
    fn each_distinct_type_is_checked_once() {
        let out = expand(
            quote!(),
            quote!(
                fn f(a: Image, b: Image, c: u8) -> Image {
                    a
                }
            ),
        );
        let checks = |ty: &str| out.matches(&format!("require :: < {ty} , _ >")).count();
        assert_eq!(checks("Image"), 1, "{out}");
        assert_eq!(checks("u8"), 1, "{out}");
    }

    #[test]
    fn worker_entry_probes_item_and_result_types() {
        let one = expand(
            quote!(),
            quote!(
                fn square(x: u64) -> u64 {
                    x * x
                }
            ),
        );
        assert!(
            one.contains("Probe :: < (u64 , u64) > :: new ()) . run (count , input , output"),
            "{one}"
        );
        let two = expand(
            quote!(),
            quote!(
                fn add(a: i64, b: i64) -> i64 {
                    a + b
                }
            ),
        );
        assert!(
            two.contains("Probe :: < ((i64 , i64 ,) , i64) > :: new ())"),
            "{two}"
        );
    }

    #[test]
    fn deprecated_stays_on_the_constant_only() {
        let out = expand(
            quote!(),
            quote!(
                #[deprecated]
                #[allow(unused_variables)]
                fn f(x: u8) {}
            ),
        );
        assert_eq!(out.matches("deprecated").count(), 1, "{out}");
        assert_eq!(out.matches("unused_variables").count(), 2, "{out}");
        assert!(
            out.find("deprecated").unwrap() < out.find("const f").unwrap(),
            "{out}"
        );
    }
}
