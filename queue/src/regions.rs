//! The one region table: cloud region names (AWS, GCP and Azure spellings,
//! plus plain city names) → data-residency area, city and coordinates. Routing
//! reads the area (`data_location`) and the coordinates (nearness to a
//! preferred region); the dashboard's map reads the city and coordinates.

use kobo_protocol::Place;

/// A known region.
struct Region {
    name: &'static str,
    /// The data-residency area `data_location` names.
    area: &'static str,
    city: &'static str,
    latitude: f64,
    longitude: f64,
}

const fn region(
    name: &'static str,
    area: &'static str,
    city: &'static str,
    latitude: f64,
    longitude: f64,
) -> Region {
    Region {
        name,
        area,
        city,
        latitude,
        longitude,
    }
}

/// Matching ignores case.
const REGIONS: &[Region] = &[
    // AWS
    region("ap-northeast-1", "japan", "Tokyo", 35.68, 139.69),
    region("ap-northeast-2", "korea", "Seoul", 37.57, 126.98),
    region("ap-northeast-3", "japan", "Osaka", 34.69, 135.50),
    region("ap-east-1", "asia", "Hong Kong", 22.32, 114.17),
    region("ap-south-1", "india", "Mumbai", 19.08, 72.88),
    region("ap-southeast-1", "asia", "Singapore", 1.35, 103.82),
    region("ap-southeast-2", "asia", "Sydney", -33.87, 151.21),
    region("ap-southeast-3", "asia", "Jakarta", -6.21, 106.85),
    region("ca-central-1", "canada", "Montréal", 45.50, -73.57),
    region("eu-central-1", "europe", "Frankfurt", 50.11, 8.68),
    region("eu-central-2", "europe", "Zürich", 47.38, 8.54),
    region("eu-north-1", "europe", "Stockholm", 59.33, 18.07),
    region("eu-south-1", "europe", "Milan", 45.46, 9.19),
    region("eu-west-1", "europe", "Dublin", 53.35, -6.26),
    region("eu-west-2", "europe", "London", 51.51, -0.13),
    region("eu-west-3", "europe", "Paris", 48.86, 2.35),
    region("me-south-1", "middle-east", "Bahrain", 26.07, 50.56),
    region("sa-east-1", "south-america", "São Paulo", -23.55, -46.63),
    region("af-south-1", "africa", "Cape Town", -33.92, 18.42),
    region("us-east-1", "us", "N. Virginia", 38.95, -77.45),
    region("us-east-2", "us", "Ohio", 39.96, -83.00),
    region("us-west-1", "us", "N. California", 37.35, -121.96),
    region("us-west-2", "us", "Oregon", 45.60, -121.18),
    // GCP
    region("asia-northeast1", "japan", "Tokyo", 35.68, 139.69),
    region("asia-northeast2", "japan", "Osaka", 34.69, 135.50),
    region("europe-west2", "europe", "London", 51.51, -0.13),
    region("europe-west3", "europe", "Frankfurt", 50.11, 8.68),
    region("us-central1", "us", "Iowa", 41.26, -95.86),
    // Azure
    region("japaneast", "japan", "Tokyo", 35.68, 139.69),
    region("japanwest", "japan", "Osaka", 34.69, 135.50),
    region("uksouth", "europe", "London", 51.51, -0.13),
    region("westeurope", "europe", "Amsterdam", 52.37, 4.90),
    region("eastus", "us", "Virginia", 37.43, -78.66),
    // Plain names
    region("tokyo", "japan", "Tokyo", 35.68, 139.69),
    region("osaka", "japan", "Osaka", 34.69, 135.50),
    region("london", "europe", "London", 51.51, -0.13),
];

/// Areas of AWS-style regions the table does not list, by name prefix.
const AREA_PREFIXES: &[(&str, &str)] = &[
    ("ap-southeast-", "asia"),
    ("ap-south-", "india"),
    ("ap-east-", "asia"),
    ("eu-", "europe"),
    ("us-", "us"),
    ("ca-", "canada"),
    ("sa-", "south-america"),
    ("me-", "middle-east"),
    ("af-", "africa"),
];

fn find(region: &str) -> Option<&'static Region> {
    let region = region.trim();
    REGIONS.iter().find(|r| r.name.eq_ignore_ascii_case(region))
}

/// The data-residency area of a region (`ap-northeast-1` → `japan`,
/// `japaneast` → `japan`). Unknown regions are their own area, so
/// `data_location` may also name a region exactly.
pub fn area_of_region(region: &str) -> &str {
    if let Some(known) = find(region) {
        return known.area;
    }
    AREA_PREFIXES
        .iter()
        .find(|(prefix, _)| region.starts_with(prefix))
        .map(|(_, area)| *area)
        .unwrap_or(region)
}

/// Approximate coordinates (latitude, longitude) of a region, for nearness
/// when a job prefers a region no node is in.
pub fn region_coordinates(region: &str) -> Option<(f64, f64)> {
    find(region).map(|r| (r.latitude, r.longitude))
}

/// Where `region` is on the map, if the table knows it.
pub fn place_of(region: &str) -> Option<Place> {
    find(region).map(|r| Place {
        city: r.city.to_string(),
        latitude: r.latitude,
        longitude: r.longitude,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_regions_are_placed_and_unknown_ones_are_not() {
        let tokyo = place_of("ap-northeast-1").expect("tokyo");
        assert_eq!(tokyo.city, "Tokyo");
        assert!((tokyo.latitude - 35.68).abs() < 0.01);
        assert_eq!(place_of("AP-NORTHEAST-3").expect("osaka").city, "Osaka");
        let london = place_of("eu-west-2").expect("london");
        assert!(london.longitude < 0.0 && london.latitude > 51.0);
        assert!(place_of("moon-base-1").is_none());
    }

    #[test]
    fn coordinates_are_on_the_globe() {
        for r in REGIONS {
            assert!((-90.0..=90.0).contains(&r.latitude), "{}", r.name);
            assert!((-180.0..=180.0).contains(&r.longitude), "{}", r.name);
        }
    }

    #[test]
    fn regions_map_to_areas() {
        assert_eq!(area_of_region("ap-northeast-3"), "japan");
        assert_eq!(area_of_region("eu-west-2"), "europe");
        assert_eq!(area_of_region("us-east-1"), "us");
        assert_eq!(area_of_region("moon-base"), "moon-base");
        assert_eq!(area_of_region("eu-west-9"), "europe");
    }

    #[test]
    fn every_spelling_of_a_place_has_its_area_and_coordinates() {
        for (other, aws) in [
            ("japaneast", "ap-northeast-1"),
            ("asia-northeast1", "ap-northeast-1"),
            ("japanwest", "ap-northeast-3"),
            ("uksouth", "eu-west-2"),
            ("europe-west3", "eu-central-1"),
            ("tokyo", "ap-northeast-1"),
        ] {
            assert_eq!(area_of_region(other), area_of_region(aws), "{other}");
            assert_eq!(
                region_coordinates(other),
                region_coordinates(aws),
                "{other}"
            );
        }
        for r in REGIONS {
            assert!(region_coordinates(r.name).is_some(), "{}", r.name);
            assert_eq!(
                region_coordinates(r.name),
                place_of(r.name).map(|p| (p.latitude, p.longitude)),
                "routing and the map agree on {}",
                r.name
            );
        }
    }
}
