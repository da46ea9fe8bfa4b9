"""The GADF side: reading DL3 datastores as gammapy reads them, writing background HDUs,
attaching backgrounds to a new datastore.
"""
