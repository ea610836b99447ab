//! Step 1: read the attribute's options and the item it is on.

use proc_macro2::{Span, TokenStream};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Expr, ExprLit, Item, ItemFn, Lit, LitStr, Meta, Token};

/// The options of `#[pool_job(...)]`.
#[derive(Default)]
#[cfg_attr(test, derive(Debug))]
pub(crate) struct Options {
    /// `name = "..."`: the registered name, instead of `module::path::fn`.
    pub(crate) name: Option<LitStr>,
    /// `crate = "..."`: the path of a renamed procpool dependency.
    pub(crate) krate: Option<syn::Path>,
}

const USAGE: &str =
    "expected `name = \"...\"` or `crate = \"...\"`, e.g. #[pool_job(name = \"resize_image\")]";

pub(crate) fn options(args: TokenStream) -> syn::Result<Options> {
    let metas = Punctuated::<Meta, Token![,]>::parse_terminated.parse2(args)?;
    let mut options = Options::default();
    for meta in metas {
        let Meta::NameValue(pair) = &meta else {
            return Err(syn::Error::new(
                meta.span(),
                format!(
                    "unknown #[pool_job] option `{}`; {USAGE}",
                    path_text(meta.path())
                ),
            ));
        };
        let key = pair
            .path
            .get_ident()
            .map(ToString::to_string)
            .unwrap_or_default();
        match key.as_str() {
            "name" => {
                let value = string_value(&pair.value, "name", "\"resize_image\"")?;
                if value.value().trim().is_empty() {
                    return Err(syn::Error::new(value.span(), "a job name cannot be empty"));
                }
                set_once(&mut options.name, value, pair.path.span(), "name")?;
            }
            "crate" => {
                let value = string_value(&pair.value, "crate", "\"procpool2\"")?;
                let path = value.parse::<syn::Path>().map_err(|_| {
                    syn::Error::new(
                        value.span(),
                        "`crate` takes the path of the procpool crate as a string, e.g. crate = \"procpool2\"",
                    )
                })?;
                set_once(&mut options.krate, path, pair.path.span(), "crate")?;
            }
            _ => {
                return Err(syn::Error::new(
                    pair.path.span(),
                    format!(
                        "unknown #[pool_job] option `{}`; {USAGE}",
                        path_text(&pair.path)
                    ),
                ));
            }
        }
    }
    Ok(options)
}

fn path_text(path: &syn::Path) -> String {
    quote::quote!(#path).to_string().replace(' ', "")
}

fn string_value(value: &Expr, key: &str, example: &str) -> syn::Result<LitStr> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Str(lit), ..
        }) => Ok(lit.clone()),
        other => {
            // `name = square` or `name = 7`: suggest the same text, quoted.
            let text = quote::quote!(#other).to_string().replace(' ', "");
            let example = match other {
                Expr::Path(_) | Expr::Lit(_) if !text.contains('"') => format!("\"{text}\""),
                _ => example.to_owned(),
            };
            Err(syn::Error::new_spanned(
                other,
                format!("`{key}` takes a string literal: write {key} = {example}"),
            ))
        }
    }
}

fn set_once<T>(slot: &mut Option<T>, value: T, span: Span, key: &str) -> syn::Result<()> {
    if slot.is_some() {
        return Err(syn::Error::new(
            span,
            format!("`{key}` is given twice; keep one"),
        ));
    }
    *slot = Some(value);
    Ok(())
}

/// The item the attribute is on, which must be a function.
pub(crate) fn function(input: TokenStream) -> syn::Result<ItemFn> {
    let item: Item = syn::parse2(input)?;
    let (what, advice) = match &item {
        Item::Fn(function) => return Ok(function.clone()),
        Item::Impl(_) => (
            "an impl block",
            "put it on each function of the block that should run in a pool \
             (an associated function without `self`), or on a free function",
        ),
        Item::Struct(_) | Item::Enum(_) => (
            if matches!(item, Item::Struct(_)) {
                "a struct"
            } else {
                "an enum"
            },
            "to send this type to a worker, derive serde's `Serialize` and `Deserialize` \
             for it and take it as an argument of a #[pool_job] function",
        ),
        Item::Const(_) => ("a const", FUNCTION_EXAMPLE),
        Item::Static(_) => ("a static", FUNCTION_EXAMPLE),
        Item::Trait(_) => ("a trait", FUNCTION_EXAMPLE),
        Item::Mod(_) => (
            "a module",
            "put it on each function in the module that should run in a pool",
        ),
        _ => ("this item", FUNCTION_EXAMPLE),
    };
    Err(syn::Error::new_spanned(
        item_head(&item),
        format!("#[pool_job] goes on a function, not on {what}; {advice}"),
    ))
}

const FUNCTION_EXAMPLE: &str =
    "write the work as `fn name(arg: Type) -> Output { ... }` and put the attribute on that";

/// The tokens that name the item, for the error's span.
fn item_head(item: &Item) -> TokenStream {
    use quote::quote;
    match item {
        Item::Struct(s) => {
            let (token, ident) = (&s.struct_token, &s.ident);
            quote!(#token #ident)
        }
        Item::Enum(e) => {
            let (token, ident) = (&e.enum_token, &e.ident);
            quote!(#token #ident)
        }
        Item::Impl(i) => {
            let (token, trait_, ty) = (&i.impl_token, &i.trait_, &i.self_ty);
            let trait_ = trait_
                .as_ref()
                .map(|(path, for_token)| quote!(#path #for_token));
            quote!(#token #trait_ #ty)
        }
        Item::Const(c) => {
            let (token, ident) = (&c.const_token, &c.ident);
            quote!(#token #ident)
        }
        Item::Static(s) => {
            let (token, ident) = (&s.static_token, &s.ident);
            quote!(#token #ident)
        }
        Item::Trait(t) => {
            let (token, ident) = (&t.trait_token, &t.ident);
            quote!(#token #ident)
        }
        Item::Mod(m) => {
            let (token, ident) = (&m.mod_token, &m.ident);
            quote!(#token #ident)
        }
        other => quote!(#other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    #[test]
    fn empty_options() {
        let options = options(quote!()).unwrap();
        assert!(options.name.is_none() && options.krate.is_none());
    }

    #[test]
    fn name_and_crate() {
        let options = options(quote!(name = "x.y", crate = "procpool2")).unwrap();
        assert_eq!(options.name.unwrap().value(), "x.y");
        let krate = options.krate.unwrap();
        assert_eq!(quote!(#krate).to_string(), "procpool2");
    }

    #[test]
    fn name_must_be_a_string() {
        let err = options(quote!(name = 5)).unwrap_err().to_string();
        assert!(err.contains("string literal"), "{err}");
    }

    #[test]
    fn unknown_option_is_named() {
        let err = options(quote!(retries = 3)).unwrap_err().to_string();
        assert!(
            err.contains("unknown #[pool_job] option `retries`"),
            "{err}"
        );
    }

    #[test]
    fn duplicate_option() {
        let err = options(quote!(name = "a", name = "b"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("given twice"), "{err}");
    }

    #[test]
    fn struct_is_rejected() {
        let err = function(quote!(
            struct S;
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("not on a struct"), "{err}");
    }

    #[test]
    fn function_is_accepted() {
        let f = function(quote!(
            fn f(x: u8) -> u8 {
                x
            }
        ))
        .unwrap();
        assert_eq!(f.sig.ident, "f");
    }

    #[test]
    fn name_suggestion_quotes_what_was_written() {
        let err = options(quote!(name = square)).unwrap_err().to_string();
        assert!(err.contains("write name = \"square\""), "{err}");
        let err = options(quote!(name = 5)).unwrap_err().to_string();
        assert!(err.contains("write name = \"5\""), "{err}");
        let err = options(quote!(name = concat!("a", "b")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("write name = \"resize_image\""), "{err}");
    }

    #[test]
    fn crate_must_be_a_path() {
        let err = options(quote!(crate = "not a path"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("crate = \"procpool2\""), "{err}");
        let options = options(quote!(crate = "::procpool2")).unwrap();
        let krate = options.krate.unwrap();
        assert_eq!(quote!(#krate).to_string(), ":: procpool2");
    }

    #[test]
    fn empty_name_is_rejected() {
        let err = options(quote!(name = " ")).unwrap_err().to_string();
        assert!(err.contains("cannot be empty"), "{err}");
    }

    #[test]
    fn flag_option_is_unknown() {
        let err = options(quote!(timeout)).unwrap_err().to_string();
        assert!(err.contains("option `timeout`"), "{err}");
    }

    #[test]
    fn impl_block_gets_its_own_advice() {
        let err = function(quote!(
            impl Task {
                fn run() {}
            }
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("not on an impl block"), "{err}");
        assert!(err.contains("associated function without `self`"), "{err}");
    }

    #[test]
    fn const_and_enum_are_rejected() {
        for (item, what) in [
            (
                quote!(
                    const N: u8 = 1;
                ),
                "a const",
            ),
            (
                quote!(
                    enum E {
                        A,
                    }
                ),
                "an enum",
            ),
            (
                quote!(
                    static S: u8 = 1;
                ),
                "a static",
            ),
            (
                quote!(
                    mod m {}
                ),
                "a module",
            ),
        ] {
            let err = function(item).unwrap_err().to_string();
            assert!(err.contains(&format!("not on {what}")), "{err}");
        }
    }
}
