//! `crds/` holds exactly what `lockkeeper crd` prints; regenerate with `make crds`.

use std::path::Path;

#[test]
fn committed_crds_match_the_resource_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    for (file, generated) in lockkeeper::resources::crd_documents() {
        let committed = std::fs::read_to_string(dir.join(file))
            .unwrap_or_else(|err| panic!("crds/{file} is missing ({err}); run `make crds`"));
        assert!(
            committed == generated,
            "crds/{file} is stale: the resource types changed; run `make crds` and commit the result"
        );
    }
}
