//! The table `kpersist-repo list` prints: one row per release, columns padded to line up.
//! A cumulative release's CVE list only grows, so the table counts them; `-o json` or
//! `-o yaml` lists them, and the reason of a yanked release.

use kpersist_kmod::repository::Release;

const HEADER: [&str; 6] = ["ID", "MODULE", "CHANNELS", "CVES", "PUBLISHED", "YANKED"];

/// The releases as an aligned text table with a header row.
pub fn release_table(releases: &[Release]) -> String {
    let rows: Vec<[String; 6]> = releases
        .iter()
        .map(|r| {
            let cves = r.cves.len().to_string();
            [
                r.id(),
                r.module_name.clone(),
                r.channels.join(","),
                cves,
                r.published.clone(),
                if r.yanked.is_some() { "yes" } else { "" }.to_string(),
            ]
        })
        .collect();
    let mut widths = HEADER.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let mut out = String::new();
    let header = HEADER.map(str::to_string);
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up() {
        let release = Release {
            kernel_release: "6.1.0-56-amd64".into(),
            build_id: "ab".into(),
            version: 12,
            module: "modules/x.ko".into(),
            sha256: "0".repeat(64),
            size: 1,
            module_name: "kpersist_v12".into(),
            cves: vec!["CVE-2024-1086".into(), "CVE-2023-0001".into()],
            channels: vec!["stable".into(), "edge".into()],
            published: "2026-01-01T00:00:00Z".into(),
            yanked: None,
        };
        let yanked = Release {
            version: 13,
            yanked: Some("breaks nfsd".into()),
            ..release.clone()
        };
        let table = release_table(&[release, yanked]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(
            !lines[1].ends_with("yes") && lines[2].ends_with("yes"),
            "{table}"
        );
        assert_eq!(lines[1].find("kpersist_v12"), lines[0].find("MODULE"));
        assert_eq!(lines[1].find("stable,edge"), lines[0].find("CHANNELS"));
        let cves = lines[0].find("CVES").unwrap();
        assert_eq!(
            &lines[1][cves..cves + 2],
            "2 ",
            "the CVEs are counted: {table}"
        );
        assert_eq!(
            release_table(&[]),
            "ID  MODULE  CHANNELS  CVES  PUBLISHED  YANKED\n"
        );
    }
}
