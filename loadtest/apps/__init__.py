"""The paper's application workloads, each written for the Parrot API and as a plain client."""
