//! Step 2: check that the function can be a job, with errors that say what to write instead.

use quote::ToTokens;
use syn::visit::Visit;
use syn::{FnArg, ItemFn, ReturnType, Type};

/// A function that passed every check.
#[cfg_attr(test, derive(Debug))]
pub(crate) struct Job {
    pub(crate) function: ItemFn,
    /// The argument types, in order.
    pub(crate) args: Vec<Type>,
    /// The result type; `()` when the function returns nothing.
    pub(crate) output: Type,
}

pub(crate) fn job(function: ItemFn) -> syn::Result<Job> {
    let sig = &function.sig;
    let name = &sig.ident;
    let mut errors = Errors::default();

    if let Some(asyncness) = &sig.asyncness {
        errors.push(
            asyncness,
            "a pool job cannot be `async`: it runs to completion in a worker process; \
             remove `async` (await the pool's AsyncResult in your async code instead)",
        );
    }
    if let Some(variadic) = &sig.variadic {
        // Variadic implies `unsafe extern "C"`: one error says it all.
        errors.push(
            variadic,
            "a pool job cannot be variadic: every argument must have a type the pool \
             can serialize; write a plain Rust function (without `unsafe extern \"C\"`) \
             that takes the values as a `Vec<T>`",
        );
    } else {
        if let syn::Safety::Unsafe(unsafety) = &sig.safety {
            errors.push(
                unsafety,
                "a pool job cannot be an `unsafe fn`: the pool calls it without knowing its \
                 safety contract; make the function safe and use `unsafe` blocks inside it",
            );
        }
        if let Some(abi) = &sig.abi {
            errors.push(
                abi,
                "a pool job cannot have an `extern` ABI: the worker calls it from Rust; \
                 remove the `extern \"...\"`, and call your extern function from a plain \
                 Rust job if you need it",
            );
        }
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        let generics = &sig.generics;
        let where_clause = &generics.where_clause;
        errors.push(
            quote::quote!(#generics #where_clause),
            format!(
                "a pool job cannot be generic: it is registered once, under one name, with \
                 concrete argument types; write one non-generic job per type you need, each \
                 calling your generic function, e.g. \
                 `#[pool_job] fn {name}_u64(...) -> ... {{ {name}::<u64>(...) }}`"
            ),
        );
    }

    let mut args = Vec::with_capacity(sig.inputs.len());
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(receiver) => errors.push(
                receiver,
                format!(
                    "a pool job cannot take `self`: a method cannot be sent to a worker \
                     process; make `{name}` a free function outside the `impl` block that \
                     takes the value as an owned argument, e.g. `fn {name}(value: MyType)`, \
                     and derive serde's `Serialize` and `Deserialize` for `MyType`"
                ),
            ),
            FnArg::Typed(arg) => {
                check_owned(&arg.ty, &mut errors);
                args.push((*arg.ty).clone());
            }
        }
    }

    let output = match &sig.output {
        ReturnType::Default => syn::parse_quote!(()),
        ReturnType::Type(_, ty) => {
            check_owned(ty, &mut errors);
            (**ty).clone()
        }
    };

    errors.finish()?;
    Ok(Job {
        function,
        args,
        output,
    })
}

#[derive(Default)]
struct Errors(Option<syn::Error>);

impl Errors {
    /// An error on `tokens`: spanned from their first to their last token,
    /// so the compiler underlines all of `&str`, not only the `&`.
    fn push(&mut self, tokens: impl ToTokens, message: impl std::fmt::Display) {
        let error = syn::Error::new_spanned(tokens, message);
        match &mut self.0 {
            Some(all) => all.combine(error),
            None => self.0 = Some(error),
        }
    }

    fn finish(self) -> syn::Result<()> {
        self.0.map_or(Ok(()), Err)
    }
}

/// Values cross a process boundary, so every type must be owned: no
/// references, no lifetimes, no `impl Trait`.
fn check_owned(ty: &Type, errors: &mut Errors) {
    struct Check<'a> {
        errors: &'a mut Errors,
    }
    impl<'ast> Visit<'ast> for Check<'_> {
        fn visit_type_reference(&mut self, reference: &'ast syn::TypeReference) {
            let suggestion = owned_suggestion(&reference.elem);
            self.errors.push(
                reference,
                format!(
                    "a pool job cannot take or return borrowed data: values are copied to and \
                     from another process; use the owned type `{suggestion}` instead"
                ),
            );
            // Lifetimes inside the reference are part of this one error.
        }
        fn visit_type_impl_trait(&mut self, it: &'ast syn::TypeImplTrait) {
            self.errors.push(
                it,
                "a pool job cannot use `impl Trait` types: the worker must know the concrete \
                 type to decode; name the concrete type (e.g. `Vec<u64>` instead of \
                 `impl IntoIterator<Item = u64>`)",
            );
        }
        fn visit_type_infer(&mut self, infer: &'ast syn::TypeInfer) {
            self.errors
                .push(infer, "a pool job's types must be written out, not `_`");
        }
        fn visit_lifetime(&mut self, lifetime: &'ast syn::Lifetime) {
            if lifetime.ident != "static" {
                self.errors.push(
                    lifetime,
                    format!(
                        "a pool job cannot use the lifetime `{lifetime}`: values are copied \
                         between processes, so they must be owned; use owned types \
                         (`String`, `Vec<T>`, `Box<T>`) instead"
                    ),
                );
            }
        }
    }
    Check { errors }.visit_type(ty);
}

/// The owned type to suggest for `&elem`.
fn owned_suggestion(elem: &Type) -> String {
    let text = quote::quote!(#elem).to_string().replace(' ', "");
    match elem {
        Type::Path(path) if path.path.is_ident("str") => "String".to_owned(),
        Type::Path(path) if path.path.is_ident("Path") => "PathBuf".to_owned(),
        Type::Slice(slice) => {
            let inner = &slice.elem;
            format!(
                "Vec<{}>",
                quote::quote!(#inner).to_string().replace(' ', "")
            )
        }
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    fn check(tokens: proc_macro2::TokenStream) -> Result<Job, String> {
        job(syn::parse2(tokens).unwrap()).map_err(|e| e.to_string())
    }

    #[test]
    fn plain_function_passes_with_its_types() {
        let job = check(quote!(
            fn add(a: i64, mut b: i64) -> i64 {
                a + b
            }
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(job.args.len(), 2);
        let output = &job.output;
        assert_eq!(quote!(#output).to_string(), "i64");
    }

    #[test]
    fn no_return_type_means_unit() {
        let job = check(quote!(
            fn f() {}
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        let output = &job.output;
        assert_eq!(quote!(#output).to_string(), "()");
    }

    #[test]
    fn str_reference_suggests_string() {
        let err = check(quote!(
            fn f(s: &str) {}
        ))
        .err()
        .unwrap();
        assert!(err.contains("`String`"), "{err}");
    }

    #[test]
    fn slice_reference_suggests_vec() {
        let err = check(quote!(
            fn f(s: &[u8]) {}
        ))
        .err()
        .unwrap();
        assert!(err.contains("`Vec<u8>`"), "{err}");
    }

    #[test]
    fn nested_reference_is_found() {
        let err = check(quote!(
            fn f(s: Vec<&'static MyType>) {}
        ))
        .err()
        .unwrap();
        assert!(err.contains("`MyType`"), "{err}");
    }

    #[test]
    fn generic_async_and_self_are_rejected() {
        assert!(
            check(quote!(
                fn f<T>(x: T) {}
            ))
            .err()
            .unwrap()
            .contains("generic")
        );
        assert!(
            check(quote!(
                async fn f() {}
            ))
            .err()
            .unwrap()
            .contains("async")
        );
        assert!(
            check(quote!(
                fn f(&self) {}
            ))
            .err()
            .unwrap()
            .contains("self")
        );
        assert!(
            check(quote!(
                extern "C" fn f() {}
            ))
            .err()
            .unwrap()
            .contains("extern")
        );
        assert!(
            check(quote!(
                fn f(x: impl Clone) {}
            ))
            .err()
            .unwrap()
            .contains("impl Trait")
        );
    }

    #[test]
    fn variadic_is_one_error() {
        let err = job(syn::parse2(quote!(
            unsafe extern "C" fn f(n: usize, args: ...) {}
        ))
        .unwrap())
        .unwrap_err();
        assert_eq!(err.into_iter().count(), 1);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let err = job(syn::parse2(quote!(
            async fn f<T>(&self, a: &str, b: impl Clone) -> &[u8] {}
        ))
        .unwrap())
        .unwrap_err();
        // async, generic, self, &str, impl Trait, &[u8]
        assert_eq!(err.into_iter().count(), 6);
    }

    #[test]
    fn messages_name_the_function_and_the_fix() {
        let err = check(quote!(
            fn largest<T: Ord>(x: Vec<T>) -> T {}
        ))
        .err()
        .unwrap();
        assert!(err.contains("largest::<u64>(...)"), "{err}");
        let err = check(quote!(
            fn area(&self) -> u32 {}
        ))
        .err()
        .unwrap();
        assert!(err.contains("make `area` a free function"), "{err}");
    }

    #[test]
    fn lifetimes_other_than_static_are_rejected() {
        let err = check(quote!(
            fn f(x: std::borrow::Cow<'a, str>) {}
        ))
        .err()
        .unwrap();
        assert!(err.contains("lifetime `'a`"), "{err}");
        check(quote!(
            fn f(x: std::borrow::Cow<'static, str>) {}
        ))
        .unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn unsafe_and_extern_are_rejected_separately() {
        let err = job(syn::parse2(quote!(
            unsafe extern "C" fn f() {}
        ))
        .unwrap())
        .unwrap_err();
        let messages: Vec<String> = err.into_iter().map(|e| e.to_string()).collect();
        assert_eq!(messages.len(), 2, "{messages:?}");
        assert!(messages[0].contains("`unsafe fn`"), "{messages:?}");
        assert!(messages[1].contains("`extern` ABI"), "{messages:?}");
    }
}
