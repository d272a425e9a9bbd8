"""Will this model work at a new site: sitecheck, its reference and report, label shift, simulated sites."""
