"""serwild.pipelines: drivers that run every stage in order (``demo``)."""
