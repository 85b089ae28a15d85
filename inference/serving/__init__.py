"""The data plane: the Vlinders application that runs inside Ray Serve. It never imports Django."""
