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
    let renamed = renamed(function, &hidden);
    let documented = documented(job);
    let const_attrs = function.attrs.iter().filter(|a| belongs_on_const(a));
    let (fn_type, tuple, output) = job_types(job);
    let checks = type_checks(&krate, job);
    let entry = registry_entry(&krate, options, job, &hidden);
    let codec = codec_functions(&krate, job);

    quote! {
        #[cfg(doc)]
        #documented

        #[cfg(not(doc))]
        #(#const_attrs)*
        #[allow(non_upper_case_globals)]
        #vis const #ident: #krate::Job<#fn_type, #tuple, #output> = {
            #[allow(non_snake_case)]
            #renamed

            #checks

            #entry

            #krate::__private::new_job::<#fn_type, #tuple, #output>(
                #hidden as #fn_type,
                &__PROCPOOL_ENTRY,
                #codec
            )
        };
    }
}

/// The job's `fn(A, B) -> R` type, its argument tuple `(A, B,)` and its
/// output type, as the `Job` handle names them.
fn job_types(job: &Job) -> (TokenStream, TokenStream, &Type) {
    let args = &job.args;
    let output = &job.output;
    (
        quote!(fn(#(#args),*) -> #output),
        quote!((#(#args,)*)),
        output,
    )
}

/// The item type a call of the job consumes: the bare argument for one
/// argument, the tuple otherwise (as `JobArgs::Item`).
fn item_type(job: &Job) -> TokenStream {
    match job.args.as_slice() {
        [single] => quote!(#single),
        _ => job_types(job).1,
    }
}

/// The user's function as it goes inside the constant: under the hidden
/// name, private, without the attributes that belong to the constant.
fn renamed(function: &syn::ItemFn, hidden: &syn::Ident) -> syn::ItemFn {
    let mut renamed = function.clone();
    renamed.sig.ident = hidden.clone();
    renamed.vis = syn::Visibility::Inherited;
    // Deprecation is for the name users call; on the hidden function it
    // would warn about the constant's own initializer. Docs are the
    // constant's: on both, rustdoc would run each doctest twice.
    renamed
        .attrs
        .retain(|attr| !attr.path().is_ident("deprecated") && !attr.path().is_ident("doc"));
    renamed
}

/// What rustdoc shows (`cfg(doc)` is set only while documenting this
/// crate): the function as written, listed under Functions with its own
/// signature and a note on running it in a pool. Doctests are collected
/// without `cfg(doc)`, from the constant's docs, so each runs once.
fn documented(job: &Job) -> syn::ItemFn {
    let how_to_call = how_to_call(job);
    let mut documented = job.function.clone();
    documented.attrs.retain(belongs_on_const);
    documented.attrs.push(syn::parse_quote!(#[doc = ""]));
    documented
        .attrs
        .push(syn::parse_quote!(#[doc = #how_to_call]));
    documented
}

/// A function that is type-checked, never called: one error per type that
/// cannot cross the process boundary, on that type.
fn type_checks(krate: &TokenStream, job: &Job) -> TokenStream {
    // A `Result` return type is checked as its two halves, so that an error
    // type that cannot cross (`Box<dyn Error>`) is reported on itself, with
    // advice for error types, rather than on the whole `Result`.
    let (values, error) = match result_halves(&job.output) {
        Some((ok, err)) => (ok, Some(err)),
        None => (&job.output, None),
    };
    let checks = distinct(job.args.iter().chain(std::iter::once(values))).map(|ty| {
        // Spanned on the user's type: that is where a missing `Serialize`
        // is reported, with the message of `__private`'s marker traits.
        quote_spanned! {ty.span()=>
            let __verdict = (&&&&&#krate::__private::Probe::<#ty>::new()).verdict();
            #krate::__private::require::<#ty, _>(__verdict);
        }
    });
    let error_check = error.map(|ty| {
        quote_spanned! {ty.span()=>
            let __verdict = (&&&&&#krate::__private::Probe::<#ty>::new()).verdict();
            #krate::__private::require_error::<#ty, _>(__verdict);
        }
    });
    quote! {
        #[allow(dead_code)]
        fn __procpool_check_types() {
            #[allow(unused_imports)]
            use #krate::__private::{
                ViaNoDeserialize as _, ViaNoSerde as _, ViaNoSerialize as _, ViaNotSend as _,
                ViaTransferable as _,
            };
            #(#checks)*
            #error_check
        }
    }
}

/// The registry entry `#[pool_job]` adds to `JOBS`: the job's name, and the
/// worker-side trampoline that runs a chunk of its items.
fn registry_entry(
    krate: &TokenStream,
    options: &Options,
    job: &Job,
    hidden: &syn::Ident,
) -> TokenStream {
    let ident = &job.function.sig.ident;
    let (fn_type, tuple, output) = job_types(job);
    let item = item_type(job);
    let name = match &options.name {
        Some(name) => quote!(#name),
        None => quote!(::core::concat!(
            ::core::module_path!(),
            "::",
            ::core::stringify!(#ident)
        )),
    };
    let vars: Vec<_> = (0..job.args.len())
        .map(|i| format_ident!("__arg{}", i))
        .collect();
    let trampoline = match job.args.as_slice() {
        [] => quote!(|(): ()| #hidden()),
        [ty] => quote!(|__arg0: #ty| #hidden(__arg0)),
        _ => quote!(|(#(#vars,)*): #tuple| #hidden(#(#vars),*)),
    };
    quote! {
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
    }
}

/// The caller-side encoder of one item and the two decoders of a reply,
/// as arguments of `new_job`.
fn codec_functions(krate: &TokenStream, job: &Job) -> TokenStream {
    let item = item_type(job);
    let output = &job.output;
    quote! {
        // The pool encodes items through this, so its methods need
        // no serde bound of their own: a type that cannot cross is
        // reported once, by `__procpool_check_types`, and resolves
        // to a stub here.
        |__item, __chunk| {
            #[allow(unused_imports)]
            use #krate::__private::{EncodeItem as _, NeverEncode as _};
            (&&#krate::__private::Probe::<#item>::new()).encode(__item, __chunk)
        },
        // Likewise for the result: a type that cannot cross
        // resolves to stubs here, so calls add no error.
        |__job, __first, __count, __bytes, __out| {
            #[allow(unused_imports)]
            use #krate::__private::{DecodeResult as _, NeverDecode as _};
            (&&#krate::__private::Probe::<#output>::new())
                .decode_values(__job, __first, __count, __bytes, __out)
        },
        |__job, __first, __count, __bytes, __out| {
            #[allow(unused_imports)]
            use #krate::__private::{DecodeResult as _, NeverDecode as _};
            (&&#krate::__private::Probe::<#output>::new())
                .decode_outcomes(__job, __first, __count, __bytes, __out)
        },
    }
}

/// The line appended to a job's documentation: how to run it in a pool.
/// Plain text: a link would have to name the procpool crate, which a user
/// may have renamed.
fn how_to_call(job: &Job) -> String {
    let ident = &job.function.sig.ident;
    let (method, items) = match job.args.len() {
        1 => ("map", "items"),
        0 => ("apply", "()"),
        _ => ("starmap", "tuples"),
    };
    format!(
        "*A pool job (`#[pool_job]`)*: call it as an ordinary function, or run it in \
         worker processes with `pool.{method}({ident}, {items})` or another `Pool` \
         method; `{ident}.name()` is the name it is registered under."
    )
}

/// What a function the attribute rejects becomes: its name as a constant
/// whose type holds the first error's `compile_error!` (as an array length:
/// in type position it would expand to `()`), plus the other errors.
///
/// The compiler gives that constant an erroneous type, and it reports
/// nothing more about expressions of such a type: `square(3)` and
/// `pool.map(square, ..)` type-check silently, so the attribute's messages
/// are the only ones. Writing the function back instead would add a second,
/// contradicting error at every pool call ("not a #[pool_job] function").
///
/// The function itself goes inside the constant's initializer, where its
/// body is still checked, unless it cannot stand alone there (a method with
/// `self`, a C-variadic definition).
pub(crate) fn rejected(function: &syn::ItemFn, error: syn::Error) -> TokenStream {
    let mut errors = error.into_iter();
    let first = errors.next().map(|e| e.to_compile_error());
    let rest = errors.map(|e| e.to_compile_error());
    let ident = &function.sig.ident;
    let vis = &function.vis;
    let attrs = function.attrs.iter().filter(|a| belongs_on_const(a));
    let standalone = function.sig.variadic.is_none()
        && !matches!(function.sig.inputs.first(), Some(syn::FnArg::Receiver(_)));
    let body = standalone.then(|| {
        let mut inner = function.clone();
        inner.vis = syn::Visibility::Inherited;
        inner
            .attrs
            .retain(|attr| !attr.path().is_ident("deprecated"));
        quote!(#[allow(dead_code, non_snake_case)] #inner)
    });
    quote! {
        #(#rest)*
        #(#attrs)*
        #[allow(non_upper_case_globals)]
        #vis const #ident: [(); #first] = { #body };
    }
}

/// `Result<T, E>` (also spelled with a path, e.g. `std::result::Result`)
/// as `(T, E)`.
fn result_halves(ty: &Type) -> Option<(&Type, &Type)> {
    let Type::Path(path) = ty else { return None };
    let last = path.path.segments.last()?;
    if last.ident != "Result" {
        return None;
    }
    let syn::PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    let mut types = args.args.iter().filter_map(|arg| match arg {
        syn::GenericArgument::Type(ty) => Some(ty),
        _ => None,
    });
    match (types.next(), types.next(), types.next()) {
        (Some(ok), Some(err), None) => Some((ok, err)),
        _ => None,
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
        // The doc comment is on the constant and on the function rustdoc
        // shows (`cfg(doc)`), never on the hidden function, whose doctests
        // would run a second time. #[inline] is on the functions only.
        assert_eq!(out.matches("Squares.").count(), 2, "{out}");
        let hidden = &out[out.find("fn __procpool_job_square").unwrap() - 40..];
        assert!(!hidden[..60].contains("Squares."), "{out}");
        assert_eq!(out.matches("inline").count(), 1, "{out}");
        assert!(
            out.contains("# [cfg (doc)] # [doc = \" Squares.\"] # [doc = \"\"] # [doc = \"*A pool job (`#[pool_job]`)*: call it as an ordinary function, or run it in worker processes with `pool.map(square, items)`"),
            "{out}"
        );
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
        // Besides it, only the function rustdoc shows, under `cfg(doc)`.
        let tokens: TokenStream = out.parse().unwrap();
        let items: Vec<syn::Item> = syn::parse2::<syn::File>(tokens).unwrap().items;
        assert_eq!(items.len(), 2, "{out}");
        let syn::Item::Fn(documented) = &items[0] else {
            panic!("{out}")
        };
        assert!(documented.attrs[0].path().is_ident("cfg"), "{out}");
        assert_eq!(documented.sig.ident, "square");
        assert!(matches!(items[1], syn::Item::Const(_)), "{out}");
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
    fn the_expansion_holds_no_unsafe() {
        // The encoder and decoders are typed function pointers: nothing in
        // the expansion asks the user's crate to trust a pointer cast.
        for function in [
            quote!(
                fn square(x: u64) -> u64 {
                    x * x
                }
            ),
            quote!(
                fn add(a: i64, b: String) -> Result<String, String> {
                    todo!()
                }
            ),
            quote!(
                fn f() {}
            ),
        ] {
            let out = expand(quote!(), function);
            assert!(!out.contains("unsafe"), "{out}");
        }
    }

    #[test]
    fn result_error_type_is_checked_on_its_own() {
        let out = expand(
            quote!(),
            quote!(
                fn parse(text: String) -> std::result::Result<u32, Box<dyn Error>> {
                    todo!()
                }
            ),
        );
        assert!(out.contains("require :: < u32 , _ >"), "{out}");
        assert!(
            out.contains("require_error :: < Box < dyn Error > , _ >"),
            "{out}"
        );
        assert!(!out.contains("require :: < std :: result"), "{out}");
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
        // On the constant and on the function rustdoc shows, not on the
        // hidden function.
        assert_eq!(out.matches("deprecated").count(), 2, "{out}");
        assert_eq!(out.matches("unused_variables").count(), 3, "{out}");
        let hidden = out.find("fn __procpool_job_f").unwrap();
        assert!(
            out.rfind("deprecated").unwrap() < out.find("const f").unwrap(),
            "{out}"
        );
        assert!(out.find("const f").unwrap() < hidden, "{out}");
    }
}
