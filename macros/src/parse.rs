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
        other => Err(syn::Error::new(
            other.span(),
            format!("`{key}` takes a string literal, e.g. {key} = {example}"),
        )),
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
    let what = match item {
        Item::Fn(function) => return Ok(function),
        Item::Struct(_) => "a struct",
        Item::Enum(_) => "an enum",
        Item::Impl(_) => "an impl block",
        Item::Const(_) => "a const",
        Item::Static(_) => "a static",
        Item::Trait(_) => "a trait",
        Item::Mod(_) => "a module",
        _ => "this item",
    };
    Err(syn::Error::new(
        item_span(&item),
        format!(
            "#[pool_job] goes on a free function, not on {what}; \
             write `fn name(arg: Type) -> Output {{ ... }}` and put the attribute on it"
        ),
    ))
}

fn item_span(item: &Item) -> Span {
    match item {
        Item::Struct(s) => s.ident.span(),
        Item::Enum(e) => e.ident.span(),
        Item::Impl(i) => i.impl_token.span,
        Item::Const(c) => c.ident.span(),
        Item::Static(s) => s.ident.span(),
        Item::Trait(t) => t.ident.span(),
        Item::Mod(m) => m.ident.span(),
        other => other.span(),
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
}
